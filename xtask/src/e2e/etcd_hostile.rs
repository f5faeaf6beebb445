//! etcd 5. Hostile and garbage values written with `etcdctl put`: bytes that are no Endpoint,
//!    a value over the size limit, an impostor claiming cluster a under another key, a
//!    cluster claiming a's subnets, and keys outside the layout. Every gateway refuses each
//!    one and names its key in the log; no peer or route appears; the good tunnels pass
//!    traffic throughout.

use std::time::Instant;

use anyhow::{ensure, Result};

use super::etcd_common::*;
use super::*;
use crate::state;
use crate::topology::{Family, Topology};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_etcd_mesh(topo)?;
    let pingers = vec![
        Pinger::start(topo, 0, 1, Family::V4)?,
        Pinger::start(topo, 1, 2, Family::V6)?,
    ];
    let offsets: Vec<u64> = (0..topo.clusters.len()).map(|i| topo.log_len(i)).collect();
    let peers_before: Vec<usize> = (0..topo.clusters.len())
        .map(|i| state::peers(topo, i).map(|p| p.len()))
        .collect::<Result<_>>()?;
    let a_subnet = topo.clusters[0].subnet.clone();
    let impostor =
        super::bad_input::endpoint_yaml("a", "10.88.0.0/16", "192.168.77.88", &fresh_public_key()?);
    let squatter = super::bad_input::endpoint_yaml(
        "squatter",
        &a_subnet,
        "192.168.77.89",
        &fresh_public_key()?,
    );
    let mut huge = super::bad_input::endpoint_yaml(
        "huge",
        "10.89.0.0/16",
        "192.168.77.90",
        &fresh_public_key()?,
    );
    huge.push_str(&format!("# {}\n", "x".repeat(1200 * 1024)));
    let values: Vec<(String, Vec<u8>)> = vec![
        (
            key("garbage"),
            b"\x00\xff{{{ not: [an endpoint\n\x1b[31m".to_vec(),
        ),
        (key("huge"), huge.into_bytes()),
        (key("impostor"), impostor.into_bytes()),
        (key("squatter"), squatter.into_bytes()),
        (key("Not_A_Label"), b"x".to_vec()),
        (format!("{PREFIX}/endpoints/a/nested"), b"x".to_vec()),
    ];
    let start = Instant::now();
    for (k, v) in &values {
        etcd(topo)?.put(k, v)?;
    }
    let names: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
    for (i, &offset) in offsets.iter().enumerate() {
        wait_logged(topo, i, offset, &names)?;
    }
    let named = start.elapsed();
    for (i, before) in peers_before.iter().enumerate() {
        let now = state::peers(topo, i)?.len();
        ensure!(
            now == *before,
            "gateway {} has {now} peers, had {before}",
            topo.clusters[i].id
        );
        let mut routes = state::routes(topo, i)?;
        routes.sort();
        ensure!(
            routes == remote_subnets(topo, i),
            "gateway {} routes {routes:?} after the hostile values",
            topo.clusters[i].id
        );
    }
    // Nothing hostile in any log line: the values' own bytes are never echoed.
    for (i, &offset) in offsets.iter().enumerate() {
        let log = topo.log_since(i, offset);
        ensure!(
            !log.contains("not: [an endpoint") && !log.contains("xxxxxxxx"),
            "gateway {} echoed a hostile value into its log",
            topo.clusters[i].id
        );
    }
    // Traffic goes on passing for a while with the hostile values in place.
    hold(std::time::Duration::from_secs(3))?;
    for (k, _) in &values {
        etcd(topo)?.ctl(["del", k])?;
    }
    wait_mesh(topo, WAIT)?;
    let counts = stop_all(pingers)?;
    Ok(format!(
        "{} hostile keys put with etcdctl (garbage, 1.2 MiB, impostor of a, squatter on a's subnet, \
         2 keys outside the layout): all refused and named in every gateway's log within {:.1}s, \
         no peer or route added, no value echoed; {}",
        values.len(),
        secs(named),
        counts.join(", "),
    ))
}
