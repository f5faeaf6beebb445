//! `cargo xtask vm test | e2e | run -- CMD...`: the kernel WireGuard test bed. The machines
//! here run a kernel without WireGuard, so this boots Debian's own kernel (which has it) in
//! qemu, on the host's own root filesystem, and runs tests in it:
//!
//! - `vm test`: the privileged test binaries (netlink, device backends, health checker) with
//!   `CI=1`, so the kernel backend runs against real kernel WireGuard and nothing may skip;
//! - `vm e2e [E2E ARGS]`: `cargo xtask e2e --backend kernel` (every gateway on kernel
//!   WireGuard; wireguard-go is removed from the guest's view, so nothing can fall back to it);
//! - `vm run [--timeout SECS] -- CMD...`: anything else, e.g. one test binary.
//!
//! See `guest` (kernel, initramfs, caching) and `boot` (qemu, shares, timeouts).

mod boot;
mod guest;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;
use crate::interrupt;
use crate::topology::{self, cargo};

const USAGE: &str = "usage: cargo xtask vm test
       cargo xtask vm e2e [--only NAME[,NAME...]]
       cargo xtask vm run [--timeout SECS] -- CMD [ARGS...]
  test   the privileged test binaries in the VM, with CI=1 (nothing may skip)
  e2e    the e2e scenarios in the VM with every gateway on --backend kernel
  run    any command in the VM (its working directory: the workspace)";

const TEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const E2E_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// A test target whose tests use the kernel (`wgcable_netlink::testing`'s namespaces), run in
/// the guest; `filter`, a test-name filter, where only part of the binary does.
#[derive(Debug)]
struct Privileged {
    package: &'static str,
    /// cargo's target name: the integration test's file stem, or the library's crate name.
    target: &'static str,
    filter: Option<&'static str>,
}

/// What `vm test` runs: only the tests that use the kernel. Everything else (fakes, paused
/// time) does not depend on the kernel and runs on the host; under TCG the pure tests of
/// wgcable-peers alone took 43 s. The unit test `every_privileged_test_file_is_placed` keeps
/// this list complete: each file that calls the namespace harness is here or in `HOST_ONLY`.
const PRIVILEGED: &[Privileged] = &[
    Privileged {
        package: "wgcable-netlink",
        target: "kernel",
        filter: None,
    },
    Privileged {
        package: "wgcable-engine",
        target: "wgcable_engine",
        filter: Some("health::"),
    },
    // Last: see the sort in `test`.
    Privileged {
        package: "wgcable-peers",
        target: "kernel",
        filter: None,
    },
];

/// Files with privileged tests that stay on the host, and why.
#[cfg_attr(not(test), allow(dead_code))]
const HOST_ONLY: &[(&str, &str)] = &[
    // Emulated under TCG, wireguard-go needs more than the UAPI client's 10 s I/O timeout to
    // take 1,000 peers, and nothing there depends on the guest's kernel.
    ("crates/wgcable-peers/tests/userspace.rs", "wireguard-go"),
    (
        "crates/wgcable/tests/kubernetes.rs",
        "the gateway on wireguard-go",
    ),
    // A real etcd in namespaces, no WireGuard at all: the guest's kernel changes nothing.
    (
        "crates/wgcable-etcd/tests/etcd.rs",
        "etcd members in namespaces",
    ),
];

pub fn run(args: &[String]) -> Result<()> {
    let Some((sub, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match sub.as_str() {
        "test" => {
            ensure!(rest.is_empty(), "{USAGE}");
            test()
        }
        "e2e" => e2e(rest),
        "run" => run_command(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown vm task {other:?}\n{USAGE}"),
    }
}

/// Why the VM cannot run here, if it cannot (`cargo xtask test` skips it then, outside CI).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (the guest's 9p share exports the host's root)".to_owned());
    }
    let missing = guest::missing_packages();
    if !missing.is_empty() {
        return Some(format!(
            "missing packages: apt-get install -y {}",
            missing.join(" ")
        ));
    }
    None
}

fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| topology::workspace_root().join("target"))
        .join("vm")
}

/// Prepares the guest, runs `job`, fails unless the command exited 0.
fn boot_and_run(what: &str, job: boot::Job) -> Result<()> {
    interrupt::install()?;
    let work = work_dir();
    let guest = guest::prepare(&work)?;
    let (accel, _) = boot::accelerator();
    eprintln!(
        "xtask: booting Debian's kernel {} ({}, {accel}) for {what}",
        guest.version,
        if guest.pvh {
            "uncompressed vmlinux, PVH boot"
        } else {
            "bzImage"
        }
    );
    let outcome = boot::run(&guest, &work, &job)?;
    eprintln!(
        "xtask: vm {what}: boot {:.1}s, command {:.1}s, exit code {}",
        outcome.boot.as_secs_f64(),
        outcome.command.as_secs_f64(),
        outcome.exit_code
    );
    ensure!(
        outcome.exit_code == 0,
        "vm {what}: the command in the VM exited with {}",
        outcome.exit_code
    );
    Ok(())
}

/// A test executable and the package directory cargo would run it in.
#[derive(Debug, PartialEq)]
struct TestBinary {
    path: String,
    dir: String,
    target: String,
}

impl TestBinary {
    /// The entry of `PRIVILEGED` this binary is, if any (package folder = package name).
    fn privileged(&self) -> Option<&'static Privileged> {
        let package = Path::new(&self.dir).file_name()?.to_string_lossy();
        PRIVILEGED
            .iter()
            .find(|p| p.package == package && p.target == self.target)
    }
}

/// Test executables out of `cargo test --no-run --message-format=json`.
fn test_binaries(json_lines: &str) -> Vec<TestBinary> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
        .filter_map(|v| {
            let path = v["executable"].as_str()?.to_owned();
            let manifest = Path::new(v["manifest_path"].as_str()?);
            let dir = manifest.parent()?.to_string_lossy().into_owned();
            let target = v["target"]["name"].as_str()?.to_owned();
            Some(TestBinary { path, dir, target })
        })
        .collect()
}

fn test() -> Result<()> {
    // The whole workspace, as `cargo xtask test` (nextest) builds it: after that this is a
    // no-op. With `--package` for only the privileged packages, cargo unifies features over
    // fewer packages and compiled some 30 crates a second time (1.5 min on 2 cores in CI).
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-run", "--message-format=json"]);
    let json = cmd::read(&mut c).context("building the test binaries for the VM")?;
    let mut binaries: Vec<(TestBinary, &Privileged)> = test_binaries(&json)
        .into_iter()
        .filter_map(|b| {
            let p = b.privileged()?;
            Some((b, p))
        })
        .collect();
    ensure!(
        binaries.len() == PRIVILEGED.len(),
        "cargo built {} of the {} privileged test binaries ({:?})",
        binaries.len(),
        PRIVILEGED.len(),
        PRIVILEGED
    );
    // The kernel-WireGuard tests of wgcable-peers last: their large devices (6,000 peers) are
    // torn down with their namespace in the background, which under TCG holds the kernel's
    // rtnl lock for about two minutes; any netlink test after them would wait that long.
    binaries.sort_by_key(|(b, _)| b.dir.ends_with("wgcable-peers") && b.target == "kernel");
    // One shell loop in the guest: every binary runs even after a failure; the exit code says
    // whether any failed.
    let mut script = String::from("rc=0\n");
    for (b, p) in &binaries {
        script.push_str(&format!(
            "echo '==== {name}{filter}'; (cd {dir} && {bin}{arg}) || {{ rc=1; echo 'FAILED: {name}'; }}\n",
            name = Path::new(&b.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            filter = p.filter.map(|f| format!(" (tests {f}*)")).unwrap_or_default(),
            dir = boot::sh_quote(&b.dir),
            bin = boot::sh_quote(&b.path),
            arg = p
                .filter
                .map(|f| format!(" {}", boot::sh_quote(f)))
                .unwrap_or_default(),
        ));
    }
    script.push_str("exit $rc\n");
    boot_and_run(
        "test",
        boot::Job {
            command: vec!["sh".into(), "-c".into(), script],
            dir: topology::workspace_root(),
            // One test at a time: what looked like a hang of the netlink tests in parallel was
            // the rtnl lock held by a large device's teardown (see the sort above); one at a
            // time is what was measured to pass.
            env: vec![
                ("CI".into(), "1".into()),
                ("RUST_TEST_THREADS".into(), "1".into()),
            ],
            hide: Vec::new(),
            timeout: TEST_TIMEOUT,
        },
    )
}

fn e2e(args: &[String]) -> Result<()> {
    let gateway = topology::build_gateway()?;
    let xtask = topology::xtask_exe()?;
    let mut command = vec![
        xtask.to_string_lossy().into_owned(),
        "e2e".to_owned(),
        "--backend".to_owned(),
        "kernel".to_owned(),
    ];
    command.extend(args.iter().cloned());
    boot_and_run(
        "e2e",
        boot::Job {
            command,
            dir: topology::workspace_root(),
            env: vec![
                ("CI".into(), "1".into()),
                (
                    "XTASK_WGCABLE".into(),
                    gateway.to_string_lossy().into_owned(),
                ),
            ],
            // Proof that no gateway falls back to userspace: there is no wireguard-go.
            hide: ["/usr/bin/wireguard-go", "/usr/sbin/wireguard-go"]
                .map(PathBuf::from)
                .to_vec(),
            timeout: E2E_TIMEOUT,
        },
    )
}

/// Runs `command` (the host's binaries) in the VM with `CI` unset, for tasks other than the
/// tests, e.g. `cargo xtask bench --vm`.
pub fn run_in_vm(
    what: &str,
    command: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> Result<()> {
    boot_and_run(
        what,
        boot::Job {
            command,
            dir: topology::workspace_root(),
            env,
            hide: Vec::new(),
            timeout,
        },
    )
}

fn run_command(args: &[String]) -> Result<()> {
    let mut timeout = TEST_TIMEOUT;
    let mut args = args.iter();
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let secs: u64 = args
                    .next()
                    .context("--timeout needs seconds")?
                    .parse()
                    .context("--timeout needs whole seconds")?;
                timeout = Duration::from_secs(secs);
            }
            "--" => {
                command.extend(args.by_ref().cloned());
            }
            other => bail!("unexpected {other:?} (the command goes after --)\n{USAGE}"),
        }
    }
    ensure!(!command.is_empty(), "no command given\n{USAGE}");
    boot_and_run(
        "run",
        boot::Job {
            command,
            dir: std::env::current_dir().context("finding the current directory")?,
            env: std::env::var("CI")
                .map(|v| vec![("CI".to_owned(), v)])
                .unwrap_or_default(),
            hide: Vec::new(),
            timeout,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_come_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"kernel"},"executable":"/w/target/debug/deps/kernel-1","manifest_path":"/w/crates/wgcable-peers/Cargo.toml"}
{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"n"},"executable":null,"manifest_path":"/w/crates/n/Cargo.toml"}
{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"userspace"},"executable":"/w/target/debug/deps/userspace-1","manifest_path":"/w/crates/wgcable-peers/Cargo.toml"}
{"reason":"build-finished","success":true}"#;
        let binaries = test_binaries(json);
        assert_eq!(
            binaries[0],
            TestBinary {
                path: "/w/target/debug/deps/kernel-1".into(),
                dir: "/w/crates/wgcable-peers".into(),
                target: "kernel".into(),
            }
        );
        assert_eq!(binaries.len(), 2);
        assert!(binaries[0].privileged().is_some());
        assert!(binaries[1].privileged().is_none());
    }

    /// Every source file that calls the namespace harness (`in_netns`, `isolated`) is run by
    /// `vm test` (its target in `PRIVILEGED`, its module inside the filter) or is in
    /// `HOST_ONLY`: a new privileged test cannot be missed by the VM without a decision.
    #[test]
    fn every_privileged_test_file_is_placed() {
        let root = topology::workspace_root();
        let mut files = Vec::new();
        let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
        for krate in crates.map(|e| e.expect("entry").path()) {
            for sub in ["src", "tests"] {
                rust_files(&krate.join(sub), &mut files);
            }
        }
        let mut unplaced = Vec::new();
        let mut placed = 0;
        for file in &files {
            let rel = file.strip_prefix(&root).expect("under the root");
            let rel_s = rel.to_string_lossy();
            if rel_s == "crates/wgcable-netlink/src/testing.rs" {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("readable");
            if !(text.contains("in_netns(") || text.contains("isolated(")) {
                continue;
            }
            placed += 1;
            if HOST_ONLY.iter().any(|(f, _)| *f == rel_s) {
                continue;
            }
            let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
            let package = parts.nth(1).expect("crates/PACKAGE");
            let kind = parts.next().expect("src or tests");
            let rest: Vec<String> = parts.collect();
            let covered = PRIVILEGED.iter().any(|p| {
                p.package == package
                    && if kind == "tests" {
                        rest.first().map(|f| f.trim_end_matches(".rs")) == Some(p.target)
                    } else {
                        // src/a/b.rs is module a::b, src/a/mod.rs is a.
                        let mut module: Vec<&str> =
                            rest.iter().map(|s| s.trim_end_matches(".rs")).collect();
                        if matches!(module.last(), Some(&"mod") | Some(&"lib")) {
                            module.pop();
                        }
                        let module = format!("{}::", module.join("::"));
                        p.target == package.replace('-', "_")
                            && p.filter.is_none_or(|f| module.starts_with(f))
                    }
            });
            if !covered {
                unplaced.push(rel_s.into_owned());
            }
        }
        assert!(placed >= PRIVILEGED.len(), "found only {placed} files");
        assert!(
            unplaced.is_empty(),
            "privileged tests that `vm test` does not run: {unplaced:?}; add them to PRIVILEGED or HOST_ONLY"
        );
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.map(|e| e.expect("entry").path()) {
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
}
