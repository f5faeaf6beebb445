//! Helpers for privileged tests of this crate and the crates above it (feature `testing`).

use std::future::Future;

use nix::sched::{unshare, CloneFlags};

use crate::{Netlink, RtNetlink};

/// Runs `body` on a current-thread runtime in a new network namespace of its own, with `lo`
/// up, and hands it a netlink handle opened inside that namespace. The host's namespace is
/// never touched: only the dedicated thread moves.
///
/// Without the privilege to create a namespace it prints one `skipped: <test>: <why>` line and
/// returns, except when the `CI` environment variable is set: there a missing privilege fails
/// the test rather than hiding it.
pub fn in_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(RtNetlink) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || -> Result<(), String> {
        // Only this thread moves to the new namespace; the netlink socket is opened here,
        // after the move, so it belongs to the new namespace.
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot create a network namespace ({e}): run as root"))?;
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
        Ok(Err(why)) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Ok(Err(why)) => println!("skipped: {test}: {why}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
