//! etcd 4. Cut one gateway's path to etcd (`etcd0` down in its namespace) for 30 s while the
//!    others change: a cluster leaves (x), one joins (y), b restarts with a new key. After the
//!    link is back, a catches up with every change and nothing else: its peers equal the
//!    Endpoints in etcd. Its tunnel to c (which did not change) passes traffic throughout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::etcd_common::*;
use super::*;
use crate::cmd::poll;
use crate::state;
use crate::topology::{Family, Topology};

const CUT: Duration = Duration::from_secs(30);

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_etcd_mesh(topo)?;
    let (a, b, c) = (0, 1, 2);
    let x_key = put_fake(topo, "x", "10.77.0.0/16", "192.168.77.77")?;
    poll("a to configure x", WAIT, || {
        ensure!(has_peer(topo, a, &x_key)?, "no peer for x yet");
        Ok(())
    })?;
    let pinger = Pinger::start(topo, a, c, Family::V4)?;

    let gw_ns = topo.clusters[a].gw_ns.clone();
    let watches_before = broker_metric(topo, a, "wgcable_broker_operations_total", "watch")?;
    let offset = topo.log_len(a);
    etcd(topo)?.set_link(&gw_ns, ETCD_LINK, false)?;
    let cut = Instant::now();
    wait_logged(topo, a, offset, &["the etcd broker is unavailable"])?;
    poll("a to export the broker as unhealthy", WAIT, || {
        let healthy = broker_metric(topo, a, "wgcable_broker_healthy", "")?;
        ensure!(healthy == 0.0, "wgcable_broker_healthy is {healthy}");
        Ok(())
    })?;

    // Meanwhile: x leaves, y joins, b comes back with a new key.
    etcd(topo)?.ctl(["del", &key("x")])?;
    let y_key = put_fake(topo, "y", "10.78.0.0/16", "192.168.77.78")?;
    let b_old = state::public_key(topo, b)?;
    topo.stop_gateway(b)?;
    let b_key_file = topo.clusters[b].state_dir.join("private.key");
    eprintln!("$ rm {}", b_key_file.display());
    std::fs::remove_file(&b_key_file)?;
    topo.start_gateway(b)?;
    let b_new = poll("b's new key in etcd", WAIT, || {
        let state = broker_state(topo)?;
        let k = state
            .iter()
            .find(|(id, _)| id == "b")
            .and_then(|(_, yaml)| public_key_in(yaml));
        ensure!(
            k.is_some() && k.as_deref() != Some(b_old.as_str()),
            "not yet"
        );
        Ok(k.unwrap_or_default())
    })?;
    ensure!(
        has_peer(topo, a, &x_key)?,
        "a dropped x while cut off from etcd"
    );
    ensure!(
        !has_peer(topo, a, &y_key)?,
        "a learned of y while cut off from etcd"
    );
    hold(CUT.saturating_sub(cut.elapsed()))?;

    etcd(topo)?.set_link(&gw_ns, ETCD_LINK, true)?;
    let restored = Instant::now();
    let caught_up = poll("a's peers to equal the Endpoints in etcd", WAIT, || {
        let want: BTreeSet<String> = broker_state(topo)?
            .iter()
            .filter(|(id, _)| id != "a")
            .filter_map(|(_, yaml)| public_key_in(yaml))
            .collect();
        let got: BTreeSet<String> = state::peers(topo, a)?
            .into_iter()
            .map(|p| p.public_key)
            .collect();
        ensure!(
            got == want,
            "a has {} peers, etcd {} others",
            got.len(),
            want.len()
        );
        Ok(restored.elapsed())
    })?;
    let cut_for = restored.duration_since(cut);
    ensure!(
        has_peer(topo, a, &b_new)? && has_peer(topo, a, &y_key)? && !has_peer(topo, a, &x_key)?,
        "a's peers do not reflect the changes"
    );

    // The reconnect shows in the metrics: healthy again, one watch (or more) opened.
    let watches = poll("a's metrics to show the reconnect", WAIT, || {
        let healthy = broker_metric(topo, a, "wgcable_broker_healthy", "")?;
        let watches = broker_metric(topo, a, "wgcable_broker_operations_total", "watch")?;
        ensure!(
            healthy == 1.0 && watches > watches_before,
            "wgcable_broker_healthy {healthy}, watches {watches_before} -> {watches}"
        );
        Ok(watches - watches_before)
    })?;

    etcd(topo)?.ctl(["del", &key("y")])?;
    poll("a to drop y", WAIT, || {
        ensure!(!has_peer(topo, a, &y_key)?, "y still configured");
        Ok(())
    })?;
    wait_mesh(topo, WAIT)?;
    let counts = stop_all(vec![pinger])?;
    Ok(format!(
        "a cut off from etcd {:.1}s while x left, y joined and b took a new key: a's peers equal \
         the Endpoints in etcd {:.2}s after the link came back (x gone, y and b's new key there; \
         wgcable_broker_healthy 0 while cut, 1 after, {watches} watch(es) reopened); {}",
        secs(cut_for),
        secs(caught_up),
        counts.join(", "),
    ))
}

fn has_peer(topo: &Topology, i: usize, public_key: &str) -> Result<bool> {
    Ok(state::peers(topo, i)?
        .iter()
        .any(|p| p.public_key == public_key))
}

/// The value of `name{broker="etcd"[,operation]}` at gateway `i` (0 when not exported).
fn broker_metric(topo: &Topology, i: usize, name: &str, operation: &str) -> Result<f64> {
    Ok(state::metrics(topo, i)?
        .iter()
        .filter(|s| s.name == name && s.label("broker") == Some("etcd"))
        .filter(|s| operation.is_empty() || s.label("operation") == Some(operation))
        .map(|s| s.value)
        .sum())
}
