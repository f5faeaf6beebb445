//! 8. `wgcable cleanup` leaves no device, route, rule or userspace process.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::{self, poll, read};
use crate::state::{self};
use crate::topology::{Family, Topology, DEVICE, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    for i in 0..topo.clusters.len() {
        topo.stop_gateway(i)?;
    }
    for i in 0..topo.clusters.len() {
        cmd::run(&mut topo.gw(i, &topo.gateway_bin, ["cleanup"]))?;
    }
    let start = Instant::now();
    for i in 0..topo.clusters.len() {
        let id = topo.clusters[i].id.clone();
        let ns = topo.clusters[i].gw_ns.clone();
        poll(
            &format!("gateway {id}'s data path to be gone"),
            Duration::from_secs(10),
            || {
                ensure!(
                    !state::links(topo, i)?.iter().any(|l| l == DEVICE),
                    "device {DEVICE} remains"
                );
                for family in Family::ALL {
                    let routes = state::routes_of(topo, i, family)?;
                    ensure!(
                        routes.is_empty(),
                        "table {TABLE} still holds {} routes {routes:?}",
                        family.name()
                    );
                    let rules = state::rules_of(topo, i, family)?;
                    ensure!(
                        rules.is_empty(),
                        "{} rules for table {TABLE} remain at priorities {rules:?}",
                        family.name()
                    );
                }
                let procs: Vec<(i32, String)> = state::processes_in_netns(&ns)
                    .into_iter()
                    .filter(|(_, comm)| comm.starts_with("wireguard"))
                    .collect();
                ensure!(
                    procs.is_empty(),
                    "userspace WireGuard processes remain: {procs:?}"
                );
                let sockets = read(&mut topo.gw(i, "ls", ["-A", "/run/wireguard"]))?;
                ensure!(
                    sockets.trim().is_empty(),
                    "/run/wireguard still holds {:?}",
                    sockets.trim()
                );
                Ok(())
            },
        )?;
    }
    let gone = secs(start.elapsed());
    // Again, on the clean host: it finds nothing, creates nothing, and says so.
    let links_before = state::links(topo, 0)?;
    let again = cmd::output(&mut topo.gw(0, &topo.gateway_bin, ["cleanup"]))?;
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    ensure!(
        again.status.success() && said.contains("nothing to remove"),
        "a second `wgcable cleanup` should say there was nothing to remove; it said: {said}"
    );
    let links_after = state::links(topo, 0)?;
    ensure!(
        links_after == links_before,
        "a cleanup of a clean host created links: {links_before:?} -> {links_after:?}"
    );
    for family in Family::ALL {
        let dst = topo.clusters[1].pod_addr(family).to_string();
        ensure!(
            !state::ping_once(topo, 0, &dst)?,
            "pod-a still reaches pod-b ({dst}) after cleanup"
        );
    }
    Ok(format!(
        "after `wgcable cleanup` in {n}/{n} gateways: no {DEVICE} device, no table {TABLE} route or rule of either \
         family, no wireguard-go process or socket (checked within {gone:.2}s); pod-a no longer reaches pod-b over \
         IPv4 or IPv6; a second cleanup said \"nothing to remove\" and created nothing",
        n = topo.clusters.len()
    ))
}
