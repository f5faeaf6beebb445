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

/// The packages whose test binaries hold privileged tests (run in namespaces in the guest).
const PRIVILEGED_PACKAGES: &[&str] = &["wgcable-netlink", "wgcable-peers", "wgcable-engine"];

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
            Some(TestBinary { path, dir })
        })
        .collect()
}

fn test() -> Result<()> {
    let mut c = cargo();
    c.args(["test", "--no-run", "--message-format=json"]);
    for p in PRIVILEGED_PACKAGES {
        c.args(["--package", p]);
    }
    let json = cmd::read(&mut c).context("building the test binaries for the VM")?;
    // The userspace backend's tests are left to the host, where wireguard-go is the same
    // program: emulated under TCG, wireguard-go needs more than the UAPI client's 10 s I/O
    // timeout to take 1,000 peers, and nothing there depends on the guest's kernel.
    let mut binaries: Vec<TestBinary> = test_binaries(&json)
        .into_iter()
        .filter(|b| {
            !Path::new(&b.path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("userspace-"))
        })
        .collect();
    // The kernel-WireGuard tests of wgcable-peers last: their large devices (6,000 peers) are
    // torn down with their namespace in the background, which under TCG holds the kernel's
    // rtnl lock for about two minutes; any netlink test after them would wait that long.
    binaries.sort_by_key(|b| b.dir.ends_with("wgcable-peers") && b.path.contains("/kernel-"));
    ensure!(!binaries.is_empty(), "cargo built no test binaries");
    // One shell loop in the guest: every binary runs even after a failure; the exit code says
    // whether any failed.
    let mut script = String::from("rc=0\n");
    for b in &binaries {
        script.push_str(&format!(
            "echo '==== {name}'; (cd {dir} && {bin}) || {{ rc=1; echo 'FAILED: {name}'; }}\n",
            name = Path::new(&b.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir = boot::sh_quote(&b.dir),
            bin = boot::sh_quote(&b.path),
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
pub fn run_in_vm(what: &str, command: Vec<String>, timeout: Duration) -> Result<()> {
    boot_and_run(
        what,
        boot::Job {
            command,
            dir: topology::workspace_root(),
            env: Vec::new(),
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
        let json = r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/w/target/debug/deps/kernel-1","manifest_path":"/w/crates/n/Cargo.toml"}
{"reason":"compiler-artifact","profile":{"test":false},"executable":null,"manifest_path":"/w/crates/n/Cargo.toml"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_binaries(json),
            vec![TestBinary {
                path: "/w/target/debug/deps/kernel-1".into(),
                dir: "/w/crates/n".into()
            }]
        );
    }
}
