//! 14. state-lock: a second gateway started on gateway a's state directory (same flags, same
//!     namespace) exits with code 2 naming a's pid, before it touches anything: a's device,
//!     peers and routes stay as they were and a stays connected.

use anyhow::{ensure, Context, Result};

use super::*;
use crate::cmd;
use crate::state;
use crate::topology::{Family, Topology};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let pids: Vec<i32> = state::processes_in_netns(&topo.clusters[0].gw_ns)
        .into_iter()
        .filter(|(_, comm)| comm == "wgcable")
        .map(|(pid, _)| pid)
        .collect();
    ensure!(
        pids.len() == 1,
        "expected one gateway process in a, found {pids:?}"
    );
    let holder = pids[0];
    // `wg show dump` lists wireguard-go's peers in its map's order, which differs between
    // reads: compare them sorted.
    let look = |topo: &Topology| -> Result<_> {
        let mut peers: Vec<_> = state::peers(topo, 0)?
            .into_iter()
            .map(|p| (p.public_key, p.allowed_ips))
            .collect();
        peers.sort();
        Ok((
            state::device_ifindex(topo, 0)?,
            peers,
            state::routes_of(topo, 0, Family::V4)?,
            state::routes_of(topo, 0, Family::V6)?,
        ))
    };
    // Gateway a is frozen (it keeps its lock) while the second one runs, so that whatever
    // changes on a's host can only be the second gateway's doing, not a's own resync.
    let paused = topo.pause_gateway(0)?;
    let before = look(topo)?;
    let args = topo.gateway_command(0, "gateway");
    let out = cmd::output(topo.gw(0, &topo.gateway_bin, &args).env("NO_COLOR", "1"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let state_dir = topo.clusters[0].state_dir.display().to_string();
    ensure!(
        out.status.code() == Some(2),
        "a second gateway on a's state directory exited with {} instead of 2: {err}",
        out.status
    );
    let named = format!("another gateway (pid {holder}) uses state directory {state_dir}");
    ensure!(err.contains(&named), "expected {named:?} in: {err}");
    ensure!(
        !err.contains("WireGuard backend selected"),
        "the second gateway got as far as its device: {err}"
    );
    let after = look(topo)?;
    drop(paused);
    ensure!(
        after == before,
        "a's device, peers or routes changed while the second gateway ran: {before:?} -> {after:?}"
    );
    ensure!(topo.gateway_running(0), "gateway a stopped");
    state::wait_connected(topo, 0, &topo.remotes(0), WAIT).context("a after the second start")?;
    Ok(format!(
        "a second gateway on a's state directory exited 2 naming a's pid {holder}; a's device (ifindex {}), {} \
         peers and routes unchanged, a still connected",
        before.0,
        before.1.len()
    ))
}
