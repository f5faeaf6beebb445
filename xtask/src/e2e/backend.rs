//! 1b. Every gateway runs on the WireGuard backend asked for (`--backend`): its device is a
//!     `wireguard` link and no wireguard-go process lives in its namespace (kernel), or a tun
//!     device served by wireguard-go (userspace); `wgcable_backend_info` says the same.

use anyhow::{bail, ensure, Context, Result};

use super::*;
use crate::cmd::read;
use crate::state;
use crate::topology::{Topology, DEVICE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let asked = topo.gateway_flag("--backend").unwrap_or("auto").to_string();
    let mut seen = Vec::new();
    for i in 0..topo.clusters.len() {
        let id = topo.clusters[i].id.clone();
        let json = read(&mut topo.gw(i, "ip", ["-d", "-j", "link", "show", DEVICE]))?;
        let links: serde_json::Value = serde_json::from_str(&json).context("ip -j link")?;
        let kind = links[0]["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        let userspace: Vec<(i32, String)> = state::processes_in_netns(&topo.clusters[i].gw_ns)
            .into_iter()
            .filter(|(_, comm)| comm.starts_with("wireguard"))
            .collect();
        let backend = match (kind.as_str(), userspace.is_empty()) {
            ("wireguard", true) => "kernel",
            ("tun", false) => "userspace",
            _ => bail!(
                "gateway {id}: device {DEVICE} is of kind {kind:?} with userspace WireGuard \
                 processes {userspace:?}: neither a kernel nor a userspace device"
            ),
        };
        ensure!(
            asked == "auto" || asked == backend,
            "gateway {id} runs on the {backend} backend, but --backend {asked} was asked for"
        );
        let reported = state::metrics(topo, i)?
            .into_iter()
            .find(|s| s.name == "wgcable_backend_info" && s.value == 1.0)
            .and_then(|s| s.label("backend").map(str::to_string))
            .context("no wgcable_backend_info series")?;
        ensure!(
            reported == backend,
            "gateway {id}: wgcable_backend_info says {reported}, the host shows {backend}"
        );
        seen.push(backend);
    }
    seen.dedup();
    Ok(format!(
        "--backend {asked}: {n}/{n} gateways on the {} backend (device kind, processes and \
         wgcable_backend_info agree)",
        seen.join("+"),
        n = topo.clusters.len()
    ))
}
