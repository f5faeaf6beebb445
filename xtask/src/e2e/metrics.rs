//! 2. `/metrics` shows connected series, non-zero bytes and established timestamps for every
//!    remote; `/connections` and `wgcable show connections` agree.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::*;
use crate::cmd::{poll, read};
use crate::state::{self};
use crate::topology::Topology;

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs_f64();
    let mut example = String::new();
    for i in 0..topo.clusters.len() {
        let id = topo.clusters[i].id.clone();
        let remotes: Vec<String> = topo.remotes(i).iter().map(|s| s.to_string()).collect();
        // Byte counters are refreshed at each status interval: poll until they show.
        let found = poll(
            &format!("gateway {id} metrics for {remotes:?}"),
            Duration::from_secs(15),
            || {
                let samples = state::metrics(topo, i)?;
                let mut found = Vec::new();
                for r in &remotes {
                    let connected = samples.iter().any(|s| {
                        s.name == "submariner_connections"
                            && s.label("remote_cluster") == Some(r)
                            && s.label("status") == Some("connected")
                            && s.value == 1.0
                    });
                    ensure!(connected, "no submariner_connections{{remote_cluster=\"{r}\",status=\"connected\"}} 1");
                    let rx = find(&samples, "submariner_gateway_rx_bytes", r)
                        .context("no rx_bytes series")?
                        .value;
                    let tx = find(&samples, "submariner_gateway_tx_bytes", r)
                        .context("no tx_bytes series")?
                        .value;
                    ensure!(
                        rx > 0.0 && tx > 0.0,
                        "remote {r}: rx_bytes {rx}, tx_bytes {tx}"
                    );
                    let ts = find(&samples, "submariner_connection_established_timestamp", r)
                        .context("no established_timestamp series")?
                        .value;
                    ensure!(
                        ts > now - 3600.0 && ts <= now + 60.0,
                        "remote {r}: established timestamp {ts} is not within the last hour"
                    );
                    // The health check pings the remote gateway through the tunnel every
                    // second; its RTT is Submariner's latency metric.
                    let latency = find(&samples, "submariner_connection_latency_seconds", r)
                        .context("no connection_latency_seconds series (health check)")?
                        .value;
                    ensure!(
                        latency > 0.0 && latency < 1.0,
                        "remote {r}: latency {latency}s is not a plausible tunnel RTT"
                    );
                    found.push((r.clone(), rx, tx, now - ts, latency));
                }
                Ok(found)
            },
        )?;
        if example.is_empty() {
            if let Some((r, rx, tx, age, latency)) = found.first() {
                example = format!(
                    "e.g. {id}->{r} rx={rx} tx={tx} bytes, established {age:.0}s ago, latency {:.3}ms",
                    latency * 1000.0
                );
            }
        }
        let http = state::connections(topo, i)?;
        let shown = state::parse_connections(&read(&mut topo.gw(
            i,
            &topo.gateway_bin,
            ["show", "connections", "--json"],
        ))?)?;
        ensure!(
            http == shown,
            "gateway {id}: /connections says {http:?} but `wgcable show connections --json` says {shown:?}"
        );
    }
    // The human form must work too (its layout is free, but it must name the remotes).
    let table = read(&mut topo.gw(0, &topo.gateway_bin, ["show", "connections"]))?;
    for r in topo.remotes(0) {
        ensure!(
            table.contains(r),
            "`wgcable show connections` does not mention cluster {r}:\n{table}"
        );
    }
    Ok(format!(
        "{n}/{n} gateways export status=\"connected\" 1, non-zero rx/tx bytes, a fresh established timestamp and a latency \
         for both remotes ({example}); /connections == `wgcable show connections --json` on {n}/{n}",
        n = topo.clusters.len()
    ))
}
