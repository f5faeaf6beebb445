//! `cargo xtask test`: the one command that runs every test. fmt check, clippy with warnings
//! denied, the unit and integration tests (nextest when installed, plus doctests, which
//! nextest does not run), a 20 s run of each fuzz target, then the e2e scenarios when root.
//! Every step runs even after a failure, so one run shows everything that is wrong; the exit
//! status is non-zero if any step failed. Without root, e2e is skipped with one line, except
//! under CI, where that is a failure. Then `vm test` and `vm e2e` (kernel WireGuard in qemu)
//! when the VM can run; when it cannot (not root, packages missing) one line says so, and
//! under CI that is a failure. The last line also says how much disk the builds took: a CI
//! machine once ran out of it mid-build, so a run starts with a warning when little is free.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cmd;
use crate::e2e;
use crate::topology::cargo;
use crate::vm;

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("usage: cargo xtask test");
        return Ok(());
    }
    if !args.is_empty() {
        bail!("usage: cargo xtask test");
    }
    let target = crate::bench::target_dir();
    if let Some(free) = free_bytes(&target).filter(|free| *free < LOW_DISK) {
        println!(
            "warning: only {} free where the builds go ({}); a clean run writes about {} \
             (free some space, or set CARGO_TARGET_DIR to a roomier disk)",
            gib(free),
            target.display(),
            gib(CLEAN_RUN),
        );
    }
    let mut results: Vec<(&str, Result<()>, Duration)> = Vec::new();
    // Each step timed, so a run (CI's too) ends with where its time went.
    let mut clock = Instant::now();
    let mut timed = |results: &mut Vec<(&'static str, Result<()>, Duration)>,
                     name: &'static str,
                     result: Result<()>| {
        results.push((name, result, clock.elapsed()));
        clock = Instant::now();
    };

    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    timed(&mut results, "fmt", cmd::run(&mut c));

    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    timed(&mut results, "clippy", cmd::run(&mut c));

    // Privileged tests that skip (outside CI) append their line here; printed at the end, so a
    // skip is seen even though the test runner captured it.
    let skip_log = std::env::temp_dir().join(format!("wgcable-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    std::env::set_var("WGCABLE_SKIP_LOG", &skip_log);

    let mut probe = cargo();
    probe.args(["nextest", "--version"]);
    let nextest = cmd::output(&mut probe).is_ok_and(|o| o.status.success());
    let mut c = cargo();
    if nextest {
        // Every test runs even after a failure, as every step does.
        c.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        c.args(["test", "--workspace", "--no-fail-fast"]);
    }
    timed(&mut results, "tests", cmd::run(&mut c));
    if nextest {
        let mut c = cargo();
        c.args(["test", "--doc", "--workspace"]);
        timed(&mut results, "doctests", cmd::run(&mut c));
    }

    if let Ok(skips) = std::fs::read_to_string(&skip_log) {
        let lines: Vec<&str> = skips.lines().collect();
        println!("\n{} privileged test(s) skipped:", lines.len());
        for line in lines {
            println!("  {line}");
        }
        let _ = std::fs::remove_file(&skip_log);
    }
    // A bounded fuzz run (20 s a target); `cargo xtask fuzz --seconds N` runs longer.
    timed(
        &mut results,
        "fuzz",
        crate::fuzz::run(&["--seconds".to_owned(), "20".to_owned()]),
    );

    let root = nix::unistd::geteuid().is_root();
    if root {
        eprintln!("\n==== cargo xtask e2e ====");
        timed(&mut results, "e2e", e2e::run(&[]));
    } else if std::env::var_os("CI").is_some() {
        println!("e2e: not root, and CI is set: the e2e scenarios must run in CI");
        timed(
            &mut results,
            "e2e",
            Err(anyhow::anyhow!("not root (needed for network namespaces)")),
        );
    } else {
        println!(
            "e2e skipped: not root (network namespaces need it; run `cargo xtask e2e` as root)"
        );
    }

    // Kernel WireGuard, which this machine's kernel lacks: in a VM booted from Debian's kernel.
    match vm::unavailable() {
        None => {
            eprintln!("\n==== cargo xtask vm test ====");
            timed(&mut results, "vm test", vm::run(&["test".to_string()]));
            eprintln!("\n==== cargo xtask vm e2e ====");
            timed(&mut results, "vm e2e", vm::run(&["e2e".to_string()]));
        }
        Some(why) if std::env::var_os("CI").is_some() => {
            println!("vm: cannot run ({why}), and CI is set: the kernel WireGuard tests must run in CI");
            timed(&mut results, "vm", Err(anyhow::anyhow!("the VM cannot run: {why}")));
        }
        Some(why) => println!(
            "vm test and vm e2e skipped: {why} (they run the kernel WireGuard tests in qemu; `cargo xtask vm test`)"
        ),
    }

    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r, _)| r.is_err())
        .map(|(n, _, _)| *n)
        .collect();
    let line: Vec<String> = results
        .iter()
        .map(|(n, r, took)| {
            format!(
                "{n} {} ({:.0} s)",
                if r.is_ok() { "ok" } else { "FAILED" },
                took.as_secs_f64()
            )
        })
        .collect();
    let fuzz_target = crate::topology::workspace_root().join("fuzz/target");
    let disk = match (dir_bytes(&[&target, &fuzz_target]), free_bytes(&target)) {
        (Some(used), Some(free)) => format!("; builds {} on disk, {} free", gib(used), gib(free)),
        _ => String::new(),
    };
    eprintln!("\ncargo xtask test: {}{disk}", line.join(", "));
    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join(", "));
    }
    Ok(())
}

/// What a clean run writes: target/ plus fuzz/target, measured at 3.3 GiB with the workspace's
/// debuginfo settings (11 GiB before them).
const CLEAN_RUN: u64 = 3_543_348_019; // 3.3 GiB
/// Under this much free space a run starts with a warning: a clean run and some room.
const LOW_DISK: u64 = 5 << 30;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Free space for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor: target/ does not exist before the first build).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available() * stat.fragment_size())
}

/// Bytes allocated under the directories that exist of `paths`, each hard-linked file once
/// (cargo links its outputs into several places), symbolic links not followed
/// (`DirEntry::metadata` does not): `du -s`, a dozen lines here and not worth a crate.
fn dir_bytes(paths: &[&Path]) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut pending: Vec<_> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| p.to_path_buf())
        .collect();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    Some(total)
}
