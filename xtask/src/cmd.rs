//! Running external commands. Every command is printed (to stderr, as `$ cmd args`) before it
//! runs, so a failing run can be replayed by hand. Inside a polling loop only the first attempt
//! is printed: a condition polled every 100 ms would otherwise bury everything else.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::interrupt;

/// Set while a poll loop repeats an attempt that was already printed once.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Builds a command from a program and its arguments.
pub fn cmd<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The command line as a shell would take it back.
pub fn show(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty()
                || a.contains(|ch: char| ch.is_whitespace() || "'\"$\\;&|<>*?(){}".contains(ch))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn echo(c: &Command) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("$ {}", show(c));
    }
}

/// Runs with inherited stdio; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    echo(c);
    let status = c
        .status()
        .with_context(|| format!("starting `{}`", show(c)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(c));
    }
    Ok(())
}

/// Runs with captured output, whatever the exit status.
pub fn output(c: &mut Command) -> Result<Output> {
    echo(c);
    c.stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", show(c)))
}

/// Runs with captured output and returns stdout; fails (quoting stderr) unless it exits 0.
///
/// Stdout is never quoted in the error: some commands (`wg show dump`) print key material.
pub fn read(c: &mut Command) -> Result<String> {
    let out = output(c)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}: {}",
            show(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("output of `{}` is not UTF-8", show(c)))
}

/// Starts a long-lived command in a process group of its own, so that Ctrl-C in the terminal
/// reaches only xtask, which then tears everything down in order.
pub fn spawn(c: &mut Command) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    echo(c);
    c.process_group(0)
        .spawn()
        .with_context(|| format!("starting `{}`", show(c)))
}

/// True if `program` is found on PATH.
pub fn exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Polls `attempt` every 100 ms until it returns `Ok` or `timeout` passes; an `Err` means
/// "not yet" and the last one is reported on timeout. Ctrl-C ends the wait at once.
pub fn poll<T>(what: &str, timeout: Duration, attempt: impl FnMut() -> Result<T>) -> Result<T> {
    poll_every(what, timeout, Duration::from_millis(100), attempt)
}

/// [`poll`] with another interval between attempts.
pub fn poll_every<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut first = true;
    loop {
        interrupt::check()?;
        if !first {
            QUIET.store(true, Ordering::Relaxed);
        }
        let result = attempt();
        QUIET.store(false, Ordering::Relaxed);
        first = false;
        match result {
            Ok(value) => return Ok(value),
            Err(e) if start.elapsed() >= timeout => {
                return Err(e.context(format!(
                    "timed out after {:.1?} waiting for {what}",
                    timeout
                )));
            }
            Err(_) => std::thread::sleep(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_only_what_a_shell_would_split() {
        let c = cmd("ip", ["-n", "ns-a", "route", "show", "table", "150"]);
        assert_eq!(show(&c), "ip -n ns-a route show table 150");
        let c = cmd(
            "sh",
            [
                "-c",
                "mount -t tmpfs tmpfs /run/wireguard && exec sleep infinity",
                "",
            ],
        );
        assert_eq!(
            show(&c),
            "sh -c 'mount -t tmpfs tmpfs /run/wireguard && exec sleep infinity' ''"
        );
        let c = cmd("echo", ["it's"]);
        assert_eq!(show(&c), r"echo 'it'\''s'");
    }

    #[test]
    fn poll_returns_the_first_success_and_reports_the_last_failure() {
        let mut n = 0;
        let got = poll_every(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                if n >= 3 {
                    Ok(n)
                } else {
                    bail!("n is {n}")
                }
            },
        );
        assert_eq!(got.expect("reaches 3"), 3);

        let err = poll("never", Duration::ZERO, || -> Result<()> {
            bail!("still false")
        })
        .expect_err("times out");
        let text = format!("{err:#}");
        assert!(text.contains("waiting for never"), "{text}");
        assert!(text.contains("still false"), "{text}");
    }
}
