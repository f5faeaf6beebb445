//! `cargo xtask fuzz [--seconds N] [TARGET]`: runs the fuzz targets in `fuzz/` (cargo-fuzz,
//! libFuzzer with AddressSanitizer) for N seconds each (default 20) and prints executions and
//! crashes per target. Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when `cargo
//! fuzz` is missing. Works on stable Rust: cargo-fuzz's sanitizer flags are unstable, so
//! RUSTC_BOOTSTRAP=1 is set for its builds only.
//!
//! New inputs found go to `fuzz/corpus/<target>` (not committed); crashes to
//! `fuzz/artifacts/<target>`, and each one must become a regression test in the crate it
//! belongs to (see docs/security.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::topology::cargo;

/// Every target, and the seed inputs it starts from besides its own corpus.
const TARGETS: &[(&str, &[&str])] = &[
    (
        "endpoint_parse",
        &[
            "crates/wgcable-api/testdata/good",
            "crates/wgcable-api/testdata/bad",
        ],
    ),
    ("admission_policy", &[]),
    ("admission_batches", &[]),
    ("uapi_reply", &[]),
    ("key_parse", &[]),
];

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [TARGET]";

struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    crashes: usize,
    ok: bool,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 20;
    let mut only: Option<&str> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context(USAGE)?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value:?} is not a number\n{USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}\ntargets: {}", names().join(", "));
                return Ok(());
            }
            name if only.is_none() && !name.starts_with('-') => only = Some(name),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    if let Some(name) = only {
        if !names().contains(&name) {
            bail!(
                "unknown fuzz target {name:?}; targets: {}",
                names().join(", ")
            );
        }
    }

    let root = workspace_root()?;
    ensure_cargo_fuzz()?;
    let mut outcomes = Vec::new();
    for (target, seeds) in TARGETS {
        if only.is_some_and(|name| name != *target) {
            continue;
        }
        outcomes.push(run_target(&root, target, seeds, seconds)?);
    }

    println!("\nfuzz: {seconds} s per target");
    println!("{:<18} {:>14} {:>8}", "target", "executions", "crashes");
    for o in &outcomes {
        let executions = o
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!("{:<18} {:>14} {:>8}", o.target, executions, o.crashes);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok || o.crashes > 0)
        .map(|o| o.target)
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>; reproduce with \
             `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|(name, _)| *name).collect()
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

fn ensure_cargo_fuzz() -> Result<()> {
    let mut probe = cargo();
    probe.args(["fuzz", "--version"]);
    if cmd::output(&mut probe).is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    println!("cargo fuzz is missing; installing it");
    let mut install = cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    cmd::run(&mut install).context("installing cargo-fuzz")
}

fn fuzz_command(root: &Path) -> Command {
    let mut c = cargo();
    c.current_dir(root).env("RUSTC_BOOTSTRAP", "1");
    c
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .count()
    })
}

fn run_target(root: &Path, target: &'static str, seeds: &[&str], seconds: u64) -> Result<Outcome> {
    eprintln!("\n==== fuzz {target} ({seconds} s) ====");
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = root.join("fuzz/artifacts").join(target);
    let before = count_files(&artifacts);

    let mut c = fuzz_command(root);
    c.args(["fuzz", "run", target]).arg(&corpus);
    for seed in seeds {
        c.arg(root.join(seed));
    }
    c.args([
        "--".to_owned(),
        format!("-max_total_time={seconds}"),
        // A hang of one input is a bug too (the deep-nesting stall was one).
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
    ]);
    let out = cmd::output(&mut c)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // libFuzzer ends with `Done N runs in S second(s)` and, with -print_final_stats,
    // `stat::number_of_executed_units: N`.
    let executions = stderr.lines().rev().find_map(|line| {
        line.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
            .or_else(|| {
                line.strip_prefix("Done ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
    });
    let crashes = count_files(&artifacts).saturating_sub(before);
    if !out.status.success() {
        // The tail says what crashed and where; the whole log would bury it.
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    Ok(Outcome {
        target,
        executions,
        crashes,
        ok: out.status.success(),
    })
}
