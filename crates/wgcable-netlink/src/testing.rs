//! Helpers for privileged tests of this crate and the crates above it (feature `testing`):
//! the one isolation harness every privileged test runs in.
//!
//! [`isolated`] runs a test body on a thread of its own that enters a fresh network namespace
//! (and, with [`Isolation::with_run_wireguard`], a private mount namespace with an empty tmpfs
//! on `/run/wireguard`, where userspace WireGuard puts its control sockets). Only that thread
//! moves: the host's namespaces are never touched, and processes the body starts (e.g.
//! `wireguard-go`) inherit the test's namespaces and die with them.
//!
//! # Skips are visible
//! A test that cannot run (no root, a missing tool) calls [`skip`]: under `CI` that is a
//! failure, never a skip. Outside CI the line `skipped: <test>: <why>` goes where a person sees
//! it although the test harness captures test output (`cargo test` shows captured output only
//! for failures, nextest too): straight to the terminal (`/dev/tty`) when there is one, else to
//! the process's stderr (which libtest's capture does not intercept), and appended to the file
//! named by `WGCABLE_SKIP_LOG` when that is set, which `cargo xtask test` reads to print every
//! skip in its summary.

use std::future::Future;
use std::io::Write;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{Netlink, RtNetlink};

/// Which namespaces a privileged test gets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Isolation {
    mount: bool,
}

impl Isolation {
    /// A fresh network namespace with `lo` up.
    pub fn netns() -> Self {
        Self { mount: false }
    }

    /// Also a private mount namespace with its own, empty `/run/wireguard` (userspace
    /// WireGuard's socket directory is per mount namespace, not per network namespace).
    pub fn with_run_wireguard() -> Self {
        Self { mount: true }
    }
}

/// Reports that `test` cannot run here. Under `CI` this panics (a missing privilege or tool is
/// a failure there); elsewhere it prints one visible line (see the module docs).
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run in CI: {why}");
    }
    print_skip(test, why);
}

fn print_skip(test: &str, why: &str) {
    let line = format!("skipped: {test}: {why}\n");
    let to_tty = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/tty")
        .and_then(|mut tty| tty.write_all(line.as_bytes()));
    if to_tty.is_err() {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    if let Some(path) = std::env::var_os("WGCABLE_SKIP_LOG") {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = log.write_all(line.as_bytes());
        }
    }
}

/// Reports that `test` needs a kernel feature only the VM of `cargo xtask vm test` has
/// (kernel WireGuard). Inside that VM (`WGCABLE_VM` set) this panics: there the feature must
/// be there. Elsewhere, even under `CI` (whose `cargo xtask test` runs the VM), it prints the
/// visible skip line.
pub fn skip_outside_vm(test: &str, why: &str) {
    if std::env::var_os("WGCABLE_VM").is_some() {
        panic!("{test}: in the VM: {why}");
    }
    print_skip(test, why);
}

/// Enters the namespaces on the calling thread; `Err` says why it could not (a skip).
fn enter(iso: Isolation) -> Result<(), String> {
    let mut flags = CloneFlags::CLONE_NEWNET;
    if iso.mount {
        flags |= CloneFlags::CLONE_NEWNS;
    }
    unshare(flags).map_err(|e| format!("cannot create namespaces ({e}): run as root"))?;
    if iso.mount {
        // Our mounts must not propagate back to the host's mount namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making / private in the new mount namespace: {e}"))?;
        std::fs::create_dir_all("/run/wireguard")
            .map_err(|e| format!("creating /run/wireguard: {e}"))?;
        mount(
            Some("tmpfs"),
            "/run/wireguard",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(|e| format!("mounting a tmpfs on /run/wireguard: {e}"))?;
    }
    Ok(())
}

/// Runs `body` on a current-thread runtime in the namespaces `iso` asks for, with `lo` up, and
/// hands it a netlink handle opened inside them. A body fails by panicking; without the
/// privilege to create namespaces the test is skipped with [`skip`].
pub fn isolated<F, Fut>(test: &str, iso: Isolation, body: F)
where
    F: FnOnce(RtNetlink) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || -> Result<(), String> {
        enter(iso)?;
        // Built on this thread, after the move, so the runtime's blocking-pool threads (spawned
        // from it) and the netlink socket belong to the new namespaces.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime");
        runtime.block_on(async move {
            let (nl, conn) = RtNetlink::connect().expect("open rtnetlink");
            tokio::spawn(conn);
            let lo = nl.link_get("lo").await.expect("get lo").expect("lo exists");
            nl.link_set_up(lo.index, true).await.expect("bring lo up");
            body(nl).await;
        });
        Ok(())
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skip(test, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// [`isolated`] in a fresh network namespace only.
pub fn in_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(RtNetlink) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    isolated(test, Isolation::netns(), body)
}
