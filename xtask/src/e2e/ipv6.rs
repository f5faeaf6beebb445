//! 1b. Dual-stack over the IPv4 underlay: each gateway routes the remote /48s through the
//!     device from its IPv6 health-check IP, looks table 150 up for IPv6 too and gives every
//!     peer both subnets of its cluster; pods ping each other over IPv6 and a checksummed TCP
//!     transfer over IPv6 passes through the tunnel.

use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::*;
use crate::state::{self};
use crate::topology::{Family, Topology, DEVICE, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let n = topo.clusters.len();
    let keys: Vec<String> = (0..n)
        .map(|i| state::public_key(topo, i))
        .collect::<Result<_>>()?;
    let mut peers_checked = 0;
    let mut priorities6 = Vec::new();
    for i in 0..n {
        let id = topo.clusters[i].id.clone();
        for family in Family::ALL {
            let src = topo.clusters[i].health_check_addr(family).to_string();
            let mut routes = state::route_entries(topo, i, family)?;
            routes.sort_by(|a, b| a.dst.cmp(&b.dst));
            let dsts: Vec<String> = routes.iter().map(|r| r.dst.clone()).collect();
            let want = remote_subnets_of(topo, i, family);
            ensure!(
                dsts == want,
                "gateway {id}: {} routes of table {TABLE} are {dsts:?}, expected {want:?}",
                family.name()
            );
            for r in &routes {
                ensure!(
                    r.dev.as_deref() == Some(DEVICE) && r.prefsrc.as_deref() == Some(src.as_str()),
                    "gateway {id}: route {} is dev {:?} src {:?}, expected dev {DEVICE} src {src}",
                    r.dst,
                    r.dev,
                    r.prefsrc
                );
            }
            // The source of a family's routes must be an address of the device, or the kernel
            // would not use it.
            let host_len = match family {
                Family::V4 => 32,
                Family::V6 => 128,
            };
            let addrs = state::device_addrs(topo, i, family)?;
            ensure!(
                addrs.contains(&format!("{src}/{host_len}")),
                "gateway {id}: {DEVICE} has {} addresses {addrs:?}, not {src}/{host_len}",
                family.name()
            );
        }
        let rules4 = state::rules_of(topo, i, Family::V4)?;
        let rules6 = state::rules_of(topo, i, Family::V6)?;
        ensure!(
            !rules6.is_empty(),
            "gateway {id} has no IPv6 rule looking up table {TABLE}"
        );
        ensure!(
            rules6 == rules4,
            "gateway {id}: IPv6 rules for table {TABLE} at priorities {rules6:?}, IPv4 ones at {rules4:?}"
        );
        priorities6 = rules6;
        let peers = state::peers(topo, i)?;
        ensure!(
            peers.len() == n - 1,
            "gateway {id} has {} peers",
            peers.len()
        );
        for p in &peers {
            let j = keys
                .iter()
                .position(|k| *k == p.public_key)
                .with_context(|| format!("gateway {id} has a peer of no cluster"))?;
            let mut got = p.allowed_ips.clone();
            got.sort();
            let mut want = topo.clusters[j].subnets();
            want.sort();
            ensure!(
                got == want,
                "gateway {id}'s peer for {} allows {got:?}, expected {want:?}",
                topo.clusters[j].id
            );
            peers_checked += 1;
        }
    }

    // Neighbour discovery on the pod links happens on the first packets: wait for one answer
    // per pair before counting losses.
    let start = Instant::now();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            wait_ping_of(topo, from, to, Family::V6, WAIT)?;
        }
    }
    let answered = secs(start.elapsed());
    let pairs = ping_all_pairs(topo, 5, Family::V6)?;

    // The transfer must go through the sender's peer for the receiver: its transmit counter grows by at least the
    // payload (plus IPv6, TCP and WireGuard headers).
    let (from, to) = (0, n - 1);
    let tx_to = |topo: &Topology| -> Result<u64> {
        let key = &keys[to];
        state::peers(topo, from)?
            .iter()
            .find(|p| p.public_key == *key)
            .map(|p| p.tx)
            .with_context(|| {
                format!(
                    "gateway {} has no peer for {}",
                    topo.clusters[from].id, topo.clusters[to].id
                )
            })
    };
    let tx_before = tx_to(topo)?;
    let rate = transfer(topo, from, to, Family::V6, TRANSFER_BYTES)?;
    let tunnel_tx = tx_to(topo)?.saturating_sub(tx_before);
    let (a, c) = (&topo.clusters[from], &topo.clusters[to]);
    ensure!(
        tunnel_tx >= TRANSFER_BYTES,
        "the IPv6 transfer passed but {}'s peer for {} sent only {tunnel_tx} bytes: it did not go through the tunnel",
        a.id,
        c.id
    );
    Ok(format!(
        "{n}/{n} gateways route the remote /48s in table {TABLE} dev {DEVICE} src their IPv6 health-check IP \
         (e.g. {a_id}: {a6} -> {remote6:?}; IPv4 routes src {a4}), IPv6 rule priority {priorities6:?} lookup \
         {TABLE}; {peers_checked}/{peers_checked} peers allow both families; all {pairs} pod pairs answered over \
         IPv6 within {answered:.2}s, then 5/5 pings each; {mib} MiB pod-{a_id} [{a_pod}] -> pod-{c_id} [{c_pod}] \
         over IPv6 sha256 match ({rate:.1} MB/s, {a_id}'s peer for {c_id} tx +{tunnel_tx} bytes)",
        a_id = a.id,
        c_id = c.id,
        a6 = a.health_check_ip6,
        a4 = a.health_check_ip,
        remote6 = remote_subnets_of(topo, from, Family::V6),
        a_pod = a.pod_ip6,
        c_pod = c.pod_ip6,
        mib = TRANSFER_BYTES / (1024 * 1024),
    ))
}
