//! Booting the guest and running one command in it.
//!
//! The host's root is the guest's root (read-only 9p, tmpfs overlay), so the host's own
//! binaries run unchanged against the guest's kernel. A second, writable 9p share (a fresh
//! directory under `target/vm/`) carries everything across: the host writes `stage2.sh` (the
//! guest's second stage: mounts, `lo` up, modules, then the command), the guest writes
//! `booted`, the command's `output` and its `exit-code`, then powers off. qemu's own exit code
//! says nothing about the command; a missing `exit-code` is an infrastructure failure.
//!
//! Bounded: a boot watchdog (no `booted` in time), an overall timeout for the command, and
//! Ctrl-C all kill qemu (the one process this starts, by its pid). `panic=-1` with
//! `-no-reboot` turns a guest panic into a qemu exit instead of a hang. The guest has no
//! network device at all, so it cannot touch the host's network.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::guest::{Guest, RESULTS_MOUNT, RESULTS_TAG, ROOT_TAG};
use crate::cmd::{self, cmd};
use crate::interrupt;

/// What to run in the guest.
#[derive(Debug)]
pub struct Job {
    /// The command and its arguments (paths on the host are paths in the guest).
    pub command: Vec<String>,
    /// Its working directory.
    pub dir: PathBuf,
    /// Extra environment (PATH, HOME and TERM are set).
    pub env: Vec<(String, String)>,
    /// Files to hide from the guest (removed in its overlay; the host keeps them), e.g.
    /// wireguard-go, to prove a run never uses it.
    pub hide: Vec<PathBuf>,
    /// How long the command may run once the guest booted.
    pub timeout: Duration,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
    pub boot: Duration,
    pub command: Duration,
}

/// From qemu's start until the guest's second stage says it is up. Under TCG on a loaded
/// 2-core machine a boot takes 4-15 s; this only catches a guest that hangs.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The accelerator: KVM only when the CPU really has it. The machines here expose a nested,
/// paravirtual /dev/kvm without vmx/svm in /proc/cpuinfo, under which a stock kernel crawls or
/// dies ("KVM internal error ... emulation failure"); TCG is slower but works.
pub fn accelerator() -> (&'static str, &'static str) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let hw = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    if hw
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
    {
        ("kvm", "host")
    } else {
        ("tcg,thread=multi", "max")
    }
}

/// Single-quotes a word for sh.
pub fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn stage2(job: &Job) -> String {
    let command: Vec<String> = job.command.iter().map(|w| sh_quote(w)).collect();
    let mut env = vec![
        // The host's PATH (cargo's bin dir) plus the system dirs a login shell would have.
        (
            "PATH".to_owned(),
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("HOME".to_owned(), "/root".to_owned()),
        ("TERM".to_owned(), "dumb".to_owned()),
        // Tests that need kernel WireGuard fail here instead of skipping.
        ("WGCABLE_VM".to_owned(), "1".to_owned()),
    ];
    env.extend(job.env.iter().cloned());
    let exports: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("export {k}={}", sh_quote(v)))
        .collect();
    let hide: Vec<String> = job
        .hide
        .iter()
        .map(|p| format!("rm -f {}", sh_quote(&p.to_string_lossy())))
        .collect();
    format!(
        r#"#!/bin/sh
# The guest's second stage, on the host's root (read-only, tmpfs overlay).
R={RESULTS_MOUNT}
{exports}
fail() {{ echo "vm-stage2: $*" > /dev/console; echo "$*" > $R/infra-error; sync; /bin/busybox poweroff -f; }}
mount -t proc proc /proc || fail "mounting /proc"
mount -t sysfs sysfs /sys || fail "mounting /sys"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp || fail "mounting /tmp"
mount -t tmpfs tmpfs /run || fail "mounting /run"
mkdir -p /run/wireguard /run/netns /run/lock
ip link set lo up || fail "bringing lo up"
modprobe wireguard || fail "modprobe wireguard"
modprobe tun || fail "modprobe tun"
{hide}
cd {dir} || fail "cd {dir}"
echo booted > $R/booted
{command} > $R/output 2>&1 < /dev/null
echo $? > $R/exit-code
sync
/bin/busybox poweroff -f
"#,
        hide = hide.join("\n"),
        exports = exports.join("\n"),
        dir = sh_quote(&job.dir.to_string_lossy()),
        command = command.join(" "),
    )
}

/// Kills qemu when dropped (timeouts, errors, Ctrl-C), by the pid of the process we started.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// Boots `guest`, runs `job`, streams its output to our stdout, returns its exit code.
pub fn run(guest: &Guest, work: &Path, job: &Job) -> Result<Outcome> {
    let results = work.join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    fs::write(results.join("stage2.sh"), stage2(job)).context("writing stage2.sh")?;
    let console = results.join("console.log");
    let (accel, cpu) = accelerator();
    let append = "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init random.trust_cpu=on";
    let mut c = cmd(
        "qemu-system-x86_64",
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-machine",
            "pc",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-smp",
            "2",
            "-m",
            "1536",
        ],
    );
    c.arg("-kernel").arg(&guest.kernel);
    c.arg("-initrd").arg(&guest.initramfs);
    c.args(["-append", append]);
    c.arg("-serial").arg(format!("file:{}", console.display()));
    c.arg("-virtfs").arg(format!(
        "local,path=/,mount_tag={ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
    ));
    c.arg("-virtfs").arg(format!(
        "local,path={},mount_tag={RESULTS_TAG},security_model=none",
        results.display()
    ));
    let qemu_log = results.join("qemu.log");
    let log = fs::File::create(&qemu_log).context("creating qemu.log")?;
    c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let start = Instant::now();
    let mut qemu = Qemu(cmd::spawn(&mut c)?);

    let output_path = results.join("output");
    let mut printed = 0u64;
    let mut booted: Option<Instant> = None;
    let status = loop {
        printed = stream(&output_path, printed)?;
        if let Some(status) = qemu.0.try_wait().context("waiting for qemu")? {
            break status;
        }
        if booted.is_none() && results.join("booted").exists() {
            booted = Some(Instant::now());
        }
        if interrupt::interrupted() {
            bail!("interrupted by Ctrl-C (qemu killed)");
        }
        match booted {
            None if start.elapsed() > BOOT_TIMEOUT => {
                drop(qemu);
                bail!(
                    "VM infrastructure failure: the guest did not boot within {BOOT_TIMEOUT:?} \
                     ({accel}); console:\n{}",
                    tail(&console, 30)
                );
            }
            Some(at) if at.elapsed() > job.timeout => {
                drop(qemu);
                bail!(
                    "the command in the VM did not finish within {:?} (qemu killed)",
                    job.timeout
                );
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream(&output_path, printed)?;
    let end = Instant::now();
    let boot_at = booted.unwrap_or(end);
    let code = fs::read_to_string(results.join("exit-code"));
    let Ok(code) = code else {
        let why = fs::read_to_string(results.join("infra-error")).unwrap_or_default();
        bail!(
            "VM infrastructure failure: the guest wrote no exit code (qemu {status}{}); console:\n{}\nqemu:\n{}",
            if why.is_empty() { String::new() } else { format!(", guest: {}", why.trim()) },
            tail(&console, 30),
            tail(&qemu_log, 10)
        );
    };
    let exit_code = code
        .trim()
        .parse()
        .with_context(|| format!("the guest's exit-code file holds {:?}", code.trim()))?;
    let _ = fs::remove_dir_all(&results);
    Ok(Outcome {
        exit_code,
        boot: boot_at - start,
        command: end - boot_at,
    })
}

/// Prints what the guest's command wrote since `from`; returns the new offset.
fn stream(path: &Path, from: u64) -> Result<u64> {
    let Ok(mut f) = fs::File::open(path) else {
        return Ok(from);
    };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    if !buf.is_empty() {
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)?;
        out.flush()?;
    }
    Ok(from + buf.len() as u64)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(sh_quote("target/debug/x"), "target/debug/x");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn stage2_runs_the_command_and_records_its_exit_code() {
        let job = Job {
            command: vec!["echo".into(), "a b".into()],
            dir: "/work".into(),
            env: vec![("CI".into(), "1".into())],
            hide: vec!["/usr/bin/wireguard-go".into()],
            timeout: Duration::from_secs(1),
        };
        let s = stage2(&job);
        assert!(s.contains("echo 'a b' > $R/output 2>&1"), "{s}");
        assert!(s.contains("echo $? > $R/exit-code"));
        assert!(s.contains("export CI=1"));
        assert!(s.contains("rm -f /usr/bin/wireguard-go"));
        assert!(s.find("booted").expect("booted") < s.find("exit-code").expect("code"));
    }
}
