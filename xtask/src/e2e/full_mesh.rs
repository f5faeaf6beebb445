//! 1. All gateways start; every connection reaches `connected`, pods ping across, and a
//!    checksummed TCP transfer passes.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::read;
use crate::state::{self};
use crate::topology::{Family, Topology, DEVICE, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    let start = Instant::now();
    for i in 0..topo.clusters.len() {
        topo.start_gateway(i)?;
    }
    wait_ping(topo, 0, 1, Duration::from_secs(60))?;
    let first_ping = secs(start.elapsed());
    wait_mesh(topo, WAIT)?;
    let connected = secs(start.elapsed());

    // Each holder sees only its own device: the mount namespaces keep the sockets apart.
    let mut keys = Vec::new();
    for i in 0..topo.clusters.len() {
        let interfaces = read(&mut topo.gw(i, "wg", ["show", "interfaces"]))?;
        ensure!(
            interfaces.split_whitespace().collect::<Vec<_>>() == [DEVICE],
            "gateway {} sees WireGuard interfaces {:?}, not just its own {DEVICE}",
            topo.clusters[i].id,
            interfaces.trim()
        );
        keys.push(state::public_key(topo, i)?);
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(
        distinct.len() == keys.len(),
        "two gateways share a public key"
    );

    for i in 0..topo.clusters.len() {
        let mut routes = state::routes(topo, i)?;
        routes.sort();
        ensure!(
            routes == remote_subnets(topo, i),
            "gateway {} table {TABLE} routes {routes:?}, expected {:?}",
            topo.clusters[i].id,
            remote_subnets(topo, i)
        );
        ensure!(
            !state::rules(topo, i)?.is_empty(),
            "gateway {} has no rule for table {TABLE}",
            topo.clusters[i].id
        );
        let peers = state::peers(topo, i)?;
        ensure!(
            peers.len() == topo.clusters.len() - 1,
            "gateway {} has {} peers",
            topo.clusters[i].id,
            peers.len()
        );
    }
    let pairs = ping_all_pairs(topo, 5, Family::V4)?;
    let rate = transfer(topo, 0, 1, Family::V4, TRANSFER_BYTES)?;
    Ok(format!(
        "{n} gateways, {c} connections each connected {connected:.1}s after start; first pod-a -> pod-b ping \
         {first_ping:.2}s after start; devices isolated, keys distinct; table {TABLE} holds the remote subnets; \
         {pairs}/{pairs} pod pairs answered 5/5 pings; {mib} MiB pod-a -> pod-b sha256 match ({rate:.1} MB/s)",
        n = topo.clusters.len(),
        c = topo.clusters.len() - 1,
        mib = TRANSFER_BYTES / (1024 * 1024),
    ))
}
