//! 6. Routes and rules of both families and a peer deleted by hand on A come back within one
//!    resync period.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::{self, poll};
use crate::state::{self};
use crate::topology::{Family, Topology, DEVICE, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    // One period plus the time to notice (poll step) and carry the repair out.
    let bound = RESYNC + Duration::from_secs(1);
    let table = TABLE.to_string();
    let expected: Vec<(Family, Vec<String>)> = Family::ALL
        .iter()
        .map(|&f| (f, remote_subnets_of(topo, 0, f)))
        .collect();

    // Both families' routes go at once: one resync must bring back both.
    for family in Family::ALL {
        cmd::run(&mut topo.ip(0, [family.flag(), "route", "flush", "table", &table]))?;
    }
    let start = Instant::now();
    poll(
        "a's table 150 routes (IPv4 and IPv6) to come back",
        WAIT,
        || {
            for (family, want) in &expected {
                let mut routes = state::routes_of(topo, 0, *family)?;
                routes.sort();
                ensure!(routes == *want, "{} routes {routes:?}", family.name());
            }
            Ok(())
        },
    )?;
    let routes_back = start.elapsed();

    let mut deleted = Vec::new();
    for family in Family::ALL {
        let priorities = state::rules_of(topo, 0, family)?;
        ensure!(
            !priorities.is_empty(),
            "a has no {} rule for table {TABLE} to delete",
            family.name()
        );
        for p in &priorities {
            cmd::run(&mut topo.ip(
                0,
                [
                    family.flag(),
                    "rule",
                    "del",
                    "priority",
                    &p.to_string(),
                    "table",
                    &table,
                ],
            ))?;
        }
        deleted.push((family, priorities.len()));
    }
    let start = Instant::now();
    poll("a's rules (IPv4 and IPv6) to come back", WAIT, || {
        for (family, count) in &deleted {
            let now = state::rules_of(topo, 0, *family)?;
            ensure!(now.len() >= *count, "{} rules {now:?}", family.name());
        }
        Ok(())
    })?;
    let rule_back = start.elapsed();

    let b_key = state::public_key(topo, 1)?;
    let b_subnets = topo.clusters[1].subnets();
    cmd::run(&mut topo.gw(0, "wg", ["set", DEVICE, "peer", &b_key, "remove"]))?;
    let start = Instant::now();
    poll("a's peer for b to come back", WAIT, || {
        let peers = state::peers(topo, 0)?;
        ensure!(
            peers
                .iter()
                .any(|p| p.public_key == b_key
                    && b_subnets.iter().all(|s| p.allowed_ips.contains(s))),
            "no peer for b allowing {b_subnets:?}"
        );
        Ok(())
    })?;
    let peer_back = start.elapsed();
    let ping_back = wait_ping(topo, 0, 1, WAIT)?;
    let ping6_back = wait_ping_of(topo, 0, 1, Family::V6, WAIT)?;

    let measured = format!(
        "IPv4+IPv6 routes back after {:.2}s, IPv4+IPv6 rules after {:.2}s, b's peer after {:.2}s (pod-a -> pod-b \
         ping {:.2}s later, over IPv6 {:.2}s); resync period {}s",
        secs(routes_back),
        secs(rule_back),
        secs(peer_back),
        secs(ping_back),
        secs(ping6_back),
        RESYNC.as_secs()
    );
    for (what, took) in [
        ("routes", routes_back),
        ("rule", rule_back),
        ("peer", peer_back),
    ] {
        ensure!(
            took <= bound,
            "{what} took longer than one resync period: {measured}"
        );
    }
    Ok(measured)
}
