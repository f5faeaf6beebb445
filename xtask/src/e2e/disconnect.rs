//! 3. Removing C's endpoint file removes C's peer, routes and metric series on A and B;
//!    restoring it reconnects.

use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::*;
use crate::cmd::poll;
use crate::state::{self};
use crate::topology::{Family, Topology, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let c = 2;
    let c_id = topo.clusters[c].id.clone();
    let c_subnet = topo.clusters[c].subnet.clone();
    let c_subnet6 = topo.clusters[c].subnet6.clone();
    let file = topo.broker_dir.join(format!("{c_id}.yaml"));
    let content = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let c_key = state::public_key(topo, c)?;
    // C's gateway would republish its own file; stop it first (its data path stays, as a
    // stopped gateway leaves it) so that only A and B's reaction to the file is measured.
    topo.stop_gateway(c)?;
    eprintln!("$ rm {}", file.display());
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the file")
        }
        _ => {}
    }
    let removed_at = Instant::now();
    for i in 0..2 {
        let id = topo.clusters[i].id.clone();
        poll(
            &format!("gateway {id} to forget cluster {c_id}"),
            WAIT,
            || {
                let conns = state::connections(topo, i)?;
                ensure!(
                    conns.iter().all(|(r, _)| *r != c_id),
                    "connections still list {c_id}: {conns:?}"
                );
                let routes = state::routes(topo, i)?;
                ensure!(
                    !routes.contains(&c_subnet),
                    "table {TABLE} still routes {c_subnet}"
                );
                let routes6 = state::routes_of(topo, i, Family::V6)?;
                ensure!(
                    !routes6.contains(&c_subnet6),
                    "table {TABLE} still routes {c_subnet6}"
                );
                ensure!(
                    state::peers(topo, i)?.iter().all(|p| p.public_key != c_key),
                    "the device still has {c_id}'s peer"
                );
                let series: Vec<String> = state::metrics(topo, i)?
                    .into_iter()
                    .filter(|s| s.label("remote_cluster") == Some(c_id.as_str()))
                    .map(|s| s.name)
                    .collect();
                ensure!(
                    series.is_empty(),
                    "metric series for {c_id} remain: {series:?}"
                );
                Ok(())
            },
        )?;
    }
    let removed = secs(removed_at.elapsed());
    ensure!(
        !state::ping_once(topo, 0, &topo.clusters[c].pod_ip.to_string())?,
        "pod-a still reaches pod-{c_id} with {c_id}'s endpoint gone"
    );

    write_broker_file(&topo.broker_dir, &format!("{c_id}.yaml"), &content)?;
    let restored_at = Instant::now();
    for i in 0..2 {
        state::wait_connected(topo, i, &topo.remotes(i), WAIT)?;
    }
    for family in Family::ALL {
        wait_ping_of(topo, 0, c, family, WAIT)?;
        wait_ping_of(topo, 1, c, family, WAIT)?;
    }
    let reconnected = secs(restored_at.elapsed());
    topo.start_gateway(c)?;
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "without {c_id}.yaml, a and b dropped {c_id}'s peer, {c_subnet} and {c_subnet6} from table {TABLE}, its \
         connection and its metric series within {removed:.2}s (pod-a -> pod-{c_id} unreachable); restored: \
         connected and pinging again (IPv4 and IPv6) within {reconnected:.2}s"
    ))
}
