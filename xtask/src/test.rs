//! `cargo xtask test`: the one command that runs every test. fmt check, clippy with warnings
//! denied, the unit and integration tests (nextest when installed, plus doctests, which
//! nextest does not run), a 20 s run of each fuzz target, then the e2e scenarios when root.
//! Every step runs even after a failure, so one run shows everything that is wrong; the exit
//! status is non-zero if any step failed. Without root, e2e is skipped with one line, except under CI, where that is a
//! failure.

use anyhow::{bail, Result};

use crate::cmd;
use crate::e2e;
use crate::topology::cargo;

pub fn run(args: &[String]) -> Result<()> {
    if crate::wants_help(args) {
        println!("usage: cargo xtask test");
        return Ok(());
    }
    if !args.is_empty() {
        bail!("usage: cargo xtask test");
    }
    let mut results: Vec<(&str, Result<()>)> = Vec::new();

    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    results.push(("fmt", cmd::run(&mut c)));

    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    results.push(("clippy", cmd::run(&mut c)));

    let mut probe = cargo();
    probe.args(["nextest", "--version"]);
    let nextest = cmd::output(&mut probe).is_ok_and(|o| o.status.success());
    let mut c = cargo();
    if nextest {
        c.args(["nextest", "run", "--workspace"]);
    } else {
        c.args(["test", "--workspace"]);
    }
    results.push(("tests", cmd::run(&mut c)));
    if nextest {
        let mut c = cargo();
        c.args(["test", "--doc", "--workspace"]);
        results.push(("doctests", cmd::run(&mut c)));
    }

    // A bounded fuzz run (20 s a target); `cargo xtask fuzz --seconds N` runs longer.
    results.push((
        "fuzz",
        crate::fuzz::run(&["--seconds".to_owned(), "20".to_owned()]),
    ));

    let root = nix::unistd::geteuid().is_root();
    if root {
        eprintln!("\n==== cargo xtask e2e ====");
        results.push(("e2e", e2e::run(&[])));
    } else if std::env::var_os("CI").is_some() {
        println!("e2e: not root, and CI is set: the e2e scenarios must run in CI");
        results.push((
            "e2e",
            Err(anyhow::anyhow!("not root (needed for network namespaces)")),
        ));
    } else {
        println!(
            "e2e skipped: not root (network namespaces need it; run `cargo xtask e2e` as root)"
        );
    }

    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    // On success the last line stays the test runner's own summary (e2e's `N passed, N failed`
    // or cargo's), which is what people and CI read.
    if !failed.is_empty() {
        let line: Vec<String> = results
            .iter()
            .map(|(n, r)| format!("{n} {}", if r.is_ok() { "ok" } else { "FAILED" }))
            .collect();
        eprintln!("\ncargo xtask test: {}", line.join(", "));
        bail!("failed steps: {}", failed.join(", "));
    }
    Ok(())
}
