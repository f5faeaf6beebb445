//! 13. data-plane: the status poll watches the data plane.
//!
//! - Gateway a's `wireguard-go` killed (SIGKILL; with `--backend kernel`, its link deleted),
//!   with a's resync interval raised to [`LONG_RESYNC`] so only the status poll can repair
//!   it: the next status poll (every [`STATUS`] here) finds the device gone and repairs it at
//!   once; a 10/s pod-a -> pod-b ping is answered again within [`KILL_BOUND`] of the kill,
//!   and the log says the status poll repaired it.
//! - `wireguard-go` frozen (SIGSTOP), with the usual short resync (so a resync may be the one
//!   that waits on the frozen device): within [`FREEZE_BOUND`] a's `/connections` shows every
//!   connection `error` with the reason, and `/readyz` answers 503 naming it; after SIGCONT
//!   both recover within [`FREEZE_BOUND`]. (A kernel device cannot freeze: with `--backend
//!   kernel` this part does not apply and the result says so.)

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::*;
use crate::cmd::{self, poll};
use crate::state;
use crate::topology::{Topology, DEVICE};

/// From the kill to the first answered ping: one status interval, the repair (a new
/// wireguard-go, its peers and routes) and a handshake, with room for a loaded machine.
const KILL_BOUND: Duration = Duration::from_millis(STATUS.as_millis() as u64 + 2500);
/// From SIGSTOP to `error` and 503, and from SIGCONT to connected and 200: one status
/// interval, the 3 s the poll waits for the device, and room for a loaded machine.
const FREEZE_BOUND: Duration = Duration::from_secs(STATUS.as_secs() + 3 + 3);
/// Gateway a's resync interval while its device is killed: far longer than the test.
const LONG_RESYNC: &str = "600s";
/// What the status poll logs when it repairs the data plane.
const REPAIR_LINE: &str = "the data plane lost its device or peers; repairing now";

fn wireguard_go(topo: &Topology, i: usize) -> Result<Pid> {
    let ns = &topo.clusters[i].gw_ns;
    let pids: Vec<i32> = state::processes_in_netns(ns)
        .into_iter()
        .filter(|(_, comm)| comm == "wireguard-go")
        .map(|(pid, _)| pid)
        .collect();
    ensure!(
        pids.len() == 1,
        "expected one wireguard-go in {ns}, found {pids:?}"
    );
    Ok(Pid::from_raw(pids[0]))
}

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let userspace = state::processes_in_netns(&topo.clusters[0].gw_ns)
        .iter()
        .any(|(_, comm)| comm == "wireguard-go");
    // Only the status poll may repair the device: restart a with a resync it never reaches.
    topo.stop_gateway(0)?;
    topo.override_flag(0, "--resync-interval", LONG_RESYNC)?;
    topo.start_gateway(0)?;
    let killed = state::wait_connected(topo, 0, &topo.remotes(0), WAIT)
        .and_then(|()| kill_device(topo, userspace));
    topo.stop_gateway(0)?;
    topo.clear_overrides(0);
    topo.start_gateway(0)?;
    let killed = killed?;
    state::wait_connected(topo, 0, &topo.remotes(0), WAIT)?;
    let frozen = if userspace {
        freeze(topo)?
    } else {
        "a kernel device cannot be frozen: the SIGSTOP check applies to wireguard-go only".into()
    };
    Ok(format!("{killed}; {frozen}"))
}

fn kill_device(topo: &mut Topology, userspace: bool) -> Result<String> {
    let ping = BackgroundPing::start(topo, 0, 1)?;
    ping.wait_more(10, WAIT)?;
    let offset = topo.log_len(0);
    let killed_at = SystemTime::now();
    let what = if userspace {
        let pid = wireguard_go(topo, 0)?;
        eprintln!("$ kill -KILL {pid}   # gateway a's wireguard-go");
        kill(pid, Signal::SIGKILL).context("killing wireguard-go")?;
        "wireguard-go killed"
    } else {
        cmd::run(&mut topo.ip(0, ["link", "del", DEVICE]))?;
        "the kernel device deleted"
    };
    // Traffic back, then two more seconds of it.
    let result = (|| -> Result<()> {
        poll("pings answered again after the kill", WAIT, || {
            let back = ping.reply_times_since(killed_at + Duration::from_millis(200));
            ensure!(!back.is_empty(), "no reply since the kill");
            Ok(())
        })?;
        ping.wait_more(20, WAIT)
    })();
    let gap = ping.longest_gap_since(killed_at);
    let summary = ping.stop()?;
    result?;
    let repaired_by_status = topo.log_since(0, offset).contains(REPAIR_LINE);
    state::wait_connected(topo, 0, &topo.remotes(0), WAIT)?;
    let measured = format!(
        "{what} on gateway a: pod-a -> pod-b (10/s) silent for {:.2}s (bound {:.1}s), {} of {} pings lost; \
         repaired by the status poll (every {}s; resync {LONG_RESYNC} for this test)",
        secs(gap),
        secs(KILL_BOUND),
        summary.lost(),
        summary.sent,
        STATUS.as_secs(),
    );
    ensure!(
        repaired_by_status,
        "gateway a never logged {REPAIR_LINE:?}: {measured}"
    );
    ensure!(
        gap <= KILL_BOUND,
        "traffic took longer than {:.1}s to come back: {measured}",
        secs(KILL_BOUND)
    );
    Ok(measured)
}

/// Every connection gateway `i` serves on /connections as (cluster, status, message).
fn connections(topo: &Topology, i: usize) -> Result<Vec<(String, String, String)>> {
    let json: Value = serde_json::from_str(&state::http(topo, i, "/connections")?)
        .context("parsing /connections")?;
    let text = |c: &Value, ptr: &str| {
        c.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(json
        .as_array()
        .context("/connections is not a list")?
        .iter()
        .map(|c| {
            (
                text(c, "/endpoint/cluster_id"),
                text(c, "/status"),
                text(c, "/statusMessage"),
            )
        })
        .collect())
}

/// /readyz: Ok(body) on 200, Err(message with the status and body) otherwise.
fn readyz(topo: &Topology, i: usize) -> Result<String> {
    state::http(topo, i, "/readyz")
}

fn freeze(topo: &mut Topology) -> Result<String> {
    let pid = wireguard_go(topo, 0)?;
    eprintln!("$ kill -STOP {pid}   # gateway a's wireguard-go");
    kill(pid, Signal::SIGSTOP).context("stopping wireguard-go")?;
    let stopped = Instant::now();
    let frozen = wait_frozen(topo, stopped);
    // Whatever happened, the process runs again.
    eprintln!("$ kill -CONT {pid}   # gateway a's wireguard-go");
    let resumed = kill(pid, Signal::SIGCONT).context("resuming wireguard-go");
    let continued = Instant::now();
    let (took, message, not_ready) = frozen?;
    resumed?;
    let recovered = poll(
        "gateway a to report connected and ready after SIGCONT",
        FREEZE_BOUND,
        || {
            let conns = connections(topo, 0)?;
            ensure!(
                conns.len() == topo.remotes(0).len()
                    && conns.iter().all(|(_, s, _)| s == "connected"),
                "connections {:?}",
                conns
                    .iter()
                    .map(|(c, s, _)| format!("{c}={s}"))
                    .collect::<Vec<_>>()
            );
            readyz(topo, 0)?;
            Ok(continued.elapsed())
        },
    )?;
    ensure!(
        not_ready.contains("does not answer"),
        "/readyz does not say why: {not_ready}"
    );
    Ok(format!(
        "wireguard-go SIGSTOPped: every connection error ({message:?}) and /readyz 503 after {:.2}s (bound {}s); \
         after SIGCONT connected and ready again {:.2}s later",
        secs(took),
        FREEZE_BOUND.as_secs(),
        secs(recovered)
    ))
}

/// Waits until gateway a reports every connection in error with a reason and /readyz 503;
/// returns how long after `stopped`, a connection's message and /readyz's answer.
fn wait_frozen(topo: &Topology, stopped: Instant) -> Result<(Duration, String, String)> {
    poll(
        "gateway a to report its connections as error and not ready",
        FREEZE_BOUND,
        || {
            let conns = connections(topo, 0)?;
            ensure!(
                conns.len() == topo.remotes(0).len()
                    && conns.iter().all(|(_, s, m)| s == "error" && !m.is_empty()),
                "connections {:?}",
                conns
                    .iter()
                    .map(|(c, s, _)| format!("{c}={s}"))
                    .collect::<Vec<_>>()
            );
            let not_ready = match readyz(topo, 0) {
                Ok(body) => anyhow::bail!("/readyz still 200: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            ensure!(not_ready.contains("503"), "/readyz: {not_ready}");
            Ok((stopped.elapsed(), conns[0].2.clone(), not_ready))
        },
    )
}
