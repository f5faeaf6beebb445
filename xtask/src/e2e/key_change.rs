//! 4. C restarts with a fresh state dir (a new key): A and B replace the peer and traffic
//!    recovers.

use std::time::Instant;

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::poll;
use crate::state::{self};
use crate::topology::Topology;

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let c = 2;
    let c_id = topo.clusters[c].id.clone();
    let old_key = state::public_key(topo, c)?;
    topo.stop_gateway(c)?;
    let fresh = topo.run_dir.join(format!("state-{c_id}-fresh"));
    topo.clusters[c].state_dir = fresh;
    let start = Instant::now();
    topo.start_gateway(c)?;
    let new_key = poll(&format!("gateway {c_id} to take a new key"), WAIT, || {
        let key = state::public_key(topo, c)?;
        ensure!(key != old_key, "the device still has the old key");
        Ok(key)
    })?;
    for i in 0..2 {
        let id = topo.clusters[i].id.clone();
        let subnets = topo.clusters[c].subnets();
        poll(
            &format!("gateway {id} to replace {c_id}'s peer"),
            WAIT,
            || {
                let peers = state::peers(topo, i)?;
                ensure!(
                    peers.iter().all(|p| p.public_key != old_key),
                    "the old peer is still there"
                );
                ensure!(
                    peers.iter().any(|p| p.public_key == new_key
                        && subnets.iter().all(|s| p.allowed_ips.contains(s))),
                    "no peer with the new key and allowed-ips {subnets:?}"
                );
                Ok(())
            },
        )?;
    }
    let replaced = secs(start.elapsed());
    wait_ping(topo, 0, c, WAIT)?;
    wait_ping(topo, 1, c, WAIT)?;
    let recovered = secs(start.elapsed());
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "{c_id} came back with a new key; a and b replaced the peer {replaced:.2}s and pods reached pod-{c_id} again \
         {recovered:.2}s after the restart; all connected"
    ))
}
