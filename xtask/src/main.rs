//! xtask: the developer task runner of the wgcable workspace (`cargo xtask <task>`).
//!
//! - `test`: every test (fmt, clippy, unit/integration tests, doctests, e2e when root).
//! - `e2e [--cleanup] [--keep]`: real gateways in network namespaces, the scenarios of issue 7.
//! - `demo [--clusters 2|3]`: the multi-cluster demo.
//! - `fuzz [--seconds N] [TARGET]`: the fuzz targets in `fuzz/`.
//! - `vm test|e2e|run`: the same in a qemu VM whose kernel has WireGuard (see `vm`).
//! - `internal ...`: helpers that the tasks above run inside the namespaces.
//!
//! It drives the `wgcable` binary from the outside only (its CLI, its HTTP endpoints, and the
//! kernel state it leaves): it links none of the workspace's crates, so it tests what users
//! run. Every external command is printed before it runs.

mod bench;
mod cmd;
mod demo;
mod e2e;
mod fuzz;
mod internal;
mod interrupt;
mod state;
mod test;
mod topology;
mod vm;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <task> [--help]
tasks:
  test                  fmt check, clippy -D warnings, all tests, then e2e when root
  e2e [--keep]          multi-cluster scenarios in network namespaces (root)
  e2e --cleanup         remove leftovers of crashed e2e/demo runs
  demo [--clusters N]   start 2 or 3 connected clusters and show them (root)
  bench [--runs N]      the benchmarks of docs/benchmarks.md (root)
  fuzz [--seconds N] [TARGET]  run the fuzz targets (cargo-fuzz), N s each (default 20)
  vm test|e2e|run       the tests, the e2e (--backend kernel) or a command in a qemu VM
                        booted from Debian's kernel, which has WireGuard (root)";

/// `--help` or `-h` anywhere in a task's arguments: the task prints its usage and exits 0.
pub(crate) fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

fn main() -> Result<()> {
    // Errors here are for people: the chain of contexts says what failed, a backtrace of
    // xtask itself (which RUST_BACKTRACE=1 would add to every error) does not help.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match task.as_str() {
        "test" => test::run(rest),
        "e2e" => e2e::run(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "internal" => internal::run(rest),
        "vm" => vm::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask <task> --help` prints the task's usage and succeeds, for every task (a task
    /// that did not know `--help` would fail on it, or start its work).
    #[test]
    fn every_task_takes_help() {
        type Task = fn(&[String]) -> Result<()>;
        let tasks: [(&str, Task); 5] = [
            ("test", test::run),
            ("e2e", e2e::run),
            ("demo", demo::run),
            ("bench", bench::run),
            ("internal", internal::run),
        ];
        for (name, run) in tasks {
            for flag in ["--help", "-h"] {
                run(&[flag.to_string()]).unwrap_or_else(|e| panic!("{name} {flag}: {e:#}"));
            }
        }
    }
}
