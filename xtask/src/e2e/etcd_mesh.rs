//! etcd 1. Three clusters exchange their Endpoints through a real 3-member etcd cluster
//!    (`--broker etcd`), starting from clean state (new keys, no file broker): every
//!    connection connects and every pod pair passes IPv4 and IPv6 traffic. The Endpoints in
//!    etcd are exactly the three clusters', each under its own key, without a lease.

use std::time::Instant;

use anyhow::{ensure, Result};

use super::etcd_common::*;
use super::*;
use crate::state;
use crate::topology::{Family, Topology};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    let start = Instant::now();
    ensure_etcd_mesh(topo)?;
    let connected = secs(start.elapsed());
    let state = broker_state(topo)?;
    let ids: Vec<&str> = state.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<&str> = topo.clusters.iter().map(|c| c.id.as_str()).collect();
    ensure!(
        ids == want,
        "etcd holds Endpoints of {ids:?}, expected {want:?}"
    );
    for (i, (id, yaml)) in state.iter().enumerate() {
        let published = public_key_in(yaml);
        ensure!(
            published.as_deref() == Some(state::public_key(topo, i)?.as_str()),
            "the Endpoint of {id} in etcd does not carry its gateway's public key"
        );
        let fields = etcd(topo)?.ctl(["get", &key(id), "-w", "fields"])?;
        ensure!(
            fields.contains("\"Lease\" : 0"),
            "the key of {id} has a lease: {fields}"
        );
    }
    let v4 = ping_all_pairs(topo, 5, Family::V4)?;
    let v6 = ping_all_pairs(topo, 5, Family::V6)?;
    let rate = transfer(topo, 0, 1, Family::V6, TRANSFER_BYTES)?;
    Ok(format!(
        "3 clusters through a 3-member etcd: full mesh connected {connected:.1}s after the switch \
         (clean state, new keys); etcd holds exactly a, b, c under {PREFIX}/endpoints/ with their \
         keys and no lease; {v4}/{v4} pairs 5/5 IPv4 pings, {v6}/{v6} pairs 5/5 IPv6 pings; \
         {mib} MiB pod-a -> pod-b over IPv6 sha256 match ({rate:.1} MB/s)",
        mib = TRANSFER_BYTES / (1024 * 1024),
    ))
}
