//! etcd 2. SIGKILL the etcd leader while pods ping at 10/s: no ping is lost, and a cluster
//!    joining right after the kill (c, which left with `wgcable leave`, back with a new identity) is
//!    configured on every other gateway within one watch round trip of its key appearing in
//!    etcd, and everyone connects.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::etcd_common::*;
use super::*;
use crate::cmd::{self, poll};
use crate::state;
use crate::topology::{Family, Topology};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_etcd_mesh(topo)?;
    let (a, b, c) = (0, 1, 2);
    // c leaves (`wgcable leave`), then comes back later as a newcomer with a new key.
    topo.stop_gateway(c)?;
    leave(topo, c)?;
    state::wait_connected(topo, a, &["b"], WAIT)?;
    state::wait_connected(topo, b, &["a"], WAIT)?;
    let _ = cmd::output(&mut topo.gw(c, &topo.gateway_bin, ["cleanup"]));
    std::fs::remove_dir_all(&topo.clusters[c].state_dir)?;

    let pingers = vec![
        Pinger::start(topo, a, b, Family::V4)?,
        Pinger::start(topo, b, a, Family::V6)?,
    ];
    let leader = etcd(topo)?.leader()?;
    let leader_name = etcd(topo)?.members[leader].name.clone();
    etcd_mut(topo)?.kill_member(leader)?;
    let killed = Instant::now();

    topo.start_gateway(c)?;
    let published = poll("c's key to appear in etcd", WAIT, || {
        let v = etcd(topo)?.ctl(["get", &key("c"), "--print-value-only"])?;
        ensure!(!v.trim().is_empty(), "not yet");
        Ok(Instant::now())
    })?;
    let c_key = state::public_key(topo, c)?;
    let configured = poll("a and b to configure c's peer", WAIT, || {
        for i in [a, b] {
            let peers = state::peers(topo, i)?;
            ensure!(
                peers.iter().any(|p| p.public_key == c_key),
                "gateway {} has no peer for c yet",
                topo.clusters[i].id
            );
        }
        Ok(published.elapsed())
    })?;
    wait_mesh(topo, WAIT)?;
    let connected = killed.elapsed();
    // A little traffic after the join too, then count.
    hold(Duration::from_secs(2))?;
    let counts = stop_all(pingers)?;
    ping_all_pairs(topo, 3, Family::V4)?;

    etcd_mut(topo)?.start_member(leader)?;
    etcd(topo)?.wait_for_leader(WAIT)?;
    Ok(format!(
        "etcd leader {leader_name} SIGKILLed under 10/s pings: {}; newcomer c configured on a and b \
         {:.0} ms after its key appeared in etcd, full mesh {:.1}s after the kill; {leader_name} rejoined",
        counts.join(", "),
        configured.as_secs_f64() * 1000.0,
        secs(connected),
    ))
}

/// Cluster `i` leaves: `wgcable leave` with the gateways' broker flags deletes its key.
pub(super) fn leave(topo: &Topology, i: usize) -> Result<()> {
    let id = topo.clusters[i].id.clone();
    let mut args = vec!["leave".to_string(), "--cluster-id".into(), id.clone()];
    args.extend(topo.broker_args.iter().cloned());
    crate::cmd::run(&mut topo.gw(i, &topo.gateway_bin, &args))?;
    let left = etcd(topo)?.ctl(["get", &key(&id)])?;
    ensure!(
        left.trim().is_empty(),
        "{id}'s key is still in etcd after `wgcable leave`"
    );
    Ok(())
}
