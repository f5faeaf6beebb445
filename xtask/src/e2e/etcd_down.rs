//! etcd 3. Stop every etcd member for 30 s under 10/s pings: no ping is lost on the existing
//!    tunnels, and a change made while etcd is down (gateway c restarts with a new IP) reaches
//!    the other gateways within 5 s of etcd's return (etcd serving again: its members restarted
//!    and a leader elected; the time from the restart commands is printed too).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::etcd_common::*;
use super::*;
use crate::cmd::poll;
use crate::topology::{Family, Topology};

/// How long etcd stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// How soon after etcd's return the change must have reached everyone.
const CATCH_UP: Duration = Duration::from_secs(5);

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_etcd_mesh(topo)?;
    let (a, b, c) = (0, 1, 2);
    let pingers = vec![
        Pinger::start(topo, a, b, Family::V4)?,
        Pinger::start(topo, b, a, Family::V6)?,
    ];
    let members = etcd(topo)?.members.len();
    let offsets: Vec<u64> = [a, b].iter().map(|&i| topo.log_len(i)).collect();
    for m in 0..members {
        etcd_mut(topo)?.stop_member(m)?;
    }
    let down = Instant::now();
    for (i, offset) in [a, b].into_iter().zip(offsets) {
        wait_logged(topo, i, offset, &["the etcd broker is unavailable"])?;
    }

    // Meanwhile c moves to another address and restarts; its publish cannot reach etcd.
    let old_ip = topo.clusters[c].underlay_ip;
    let new_ip = next_ip(old_ip);
    crate::cmd::run(&mut topo.ip(c, ["addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]))?;
    topo.stop_gateway(c)?;
    topo.clusters[c].underlay_ip = new_ip;
    topo.start_gateway(c)?;
    for i in [a, b] {
        ensure!(
            remote_ip(topo, i, "c")?.as_deref() == Some(old_ip.to_string().as_str()),
            "gateway {} learned c's new IP while etcd was down?",
            topo.clusters[i].id
        );
    }
    hold(OUTAGE.saturating_sub(down.elapsed()))?;

    for m in 0..members {
        etcd_mut(topo)?.start_member(m)?;
    }
    let restarted = Instant::now();
    let mut serving: Option<Instant> = None;
    poll("a and b to learn c's new IP", WAIT, || {
        if serving.is_none() && etcd(topo)?.leader().is_ok() {
            serving = Some(Instant::now());
        }
        for i in [a, b] {
            let ip = remote_ip(topo, i, "c")?;
            ensure!(
                ip.as_deref() == Some(new_ip.to_string().as_str()),
                "gateway {} has c at {ip:?}",
                topo.clusters[i].id
            );
        }
        Ok(())
    })?;
    let reached_at = Instant::now();
    let serving = serving.unwrap_or(reached_at);
    let reached = reached_at.saturating_duration_since(serving);
    let outage = restarted.duration_since(down);
    let counts = stop_all(pingers)?;
    ensure!(
        reached <= CATCH_UP,
        "c's new IP reached a and b {:.1}s after etcd's return (at most {CATCH_UP:?})",
        secs(reached)
    );
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "all etcd members down {:.1}s: {}; c restarted on {new_ip} meanwhile, which reached a and b \
         {:.2}s after etcd served again (bound {:.0}s; {:.2}s after the members were restarted)",
        secs(outage),
        counts.join(", "),
        secs(reached),
        CATCH_UP.as_secs_f64(),
        secs(reached_at.duration_since(restarted)),
    ))
}

/// The next free underlay address for a gateway that moves (192.168.77.1X -> .3X, and back).
fn next_ip(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let d = if d >= 30 { d - 20 } else { d + 20 };
    Ipv4Addr::new(a, b, c, d)
}
