//! etcd 3. Stop every etcd member for 30 s under 10/s pings: no ping is lost on the existing
//!    tunnels, and a change made while etcd is down (gateway c restarts with a new IP) reaches
//!    the other gateways within 5 s of etcd's return (etcd serving again: a linearizable read
//!    answered, so its members restarted and a leader elected; the time from the restart
//!    commands is printed too). Watched from threads inside the namespaces, with no process
//!    started, so the figure is the gateways' and not the checks' (see [`watch_return`]).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::etcd_common::*;
use super::*;
use crate::cmd::poll_every;
use crate::topology::{Family, Topology, METRICS_URL};

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
    let (serving, learned) = watch_return(topo, [a, b], &new_ip.to_string())?;
    let reached_at = learned
        .iter()
        .map(|(_, end)| *end)
        .max()
        .unwrap_or(serving.1);
    // Strictly: from the start of the check that first found etcd serving to the end of the
    // one that found the change on the last gateway.
    let reached = reached_at.saturating_duration_since(serving.0);
    let resolution = std::iter::once(serving)
        .chain(learned.iter().copied())
        .map(|(start, end)| end.duration_since(start))
        .max()
        .unwrap_or_default();
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
         {:.2}s after etcd served again (bound {:.0}s; one check takes up to {:.2}s here; \
         {:.2}s after the members were restarted)",
        secs(outage),
        counts.join(", "),
        secs(reached),
        CATCH_UP.as_secs_f64(),
        secs(resolution),
        secs(reached_at.duration_since(restarted)),
    ))
}

/// A check's start and end.
type Span = (Instant, Instant);

/// Watches for etcd's return and for c's new IP on gateways `on`, each on a thread of its own
/// inside the namespace it looks at, with no process started: a check is a request or two
/// over loopback and takes milliseconds, where starting `etcdctl` or an HTTP client in a
/// namespace takes a good part of a second under the VM's emulation (polled in one loop that
/// way, a change the gateways' logs showed applied 0.8 s after etcd served measured 2.1 s).
/// Returns the check that first found etcd serving (a linearizable read answered: members up,
/// a leader elected) and, for each gateway, the one that first found the new IP.
fn watch_return(topo: &Topology, on: [usize; 2], new_ip: &str) -> Result<(Span, Vec<Span>)> {
    const EVERY: Duration = Duration::from_millis(20);
    let hub = format!("/run/netns/{}", etcd(topo)?.hub);
    let urls = etcd(topo)?.client_urls();
    std::thread::scope(|s| {
        let serving = s.spawn(|| {
            in_netns(&hub)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            poll_every("etcd to serve again", WAIT, EVERY, || {
                let start = Instant::now();
                rt.block_on(linearizable_read(&urls))?;
                Ok((start, Instant::now()))
            })
        });
        let learned: Vec<_> = on
            .into_iter()
            .map(|i| {
                let cluster = &topo.clusters[i];
                s.spawn(move || {
                    in_netns(&format!("/proc/{}/ns/net", cluster.holder_pid))?;
                    let url = format!("{METRICS_URL}/connections");
                    poll_every(
                        &format!("{} to learn c's new IP", cluster.id),
                        WAIT,
                        EVERY,
                        || {
                            let start = Instant::now();
                            let json = crate::internal::http_get(&url, Duration::from_secs(2))?;
                            let ip = remote_ip_in(&json, "c")?;
                            ensure!(
                                ip.as_deref() == Some(new_ip),
                                "gateway {} has c at {ip:?}",
                                cluster.id
                            );
                            Ok((start, Instant::now()))
                        },
                    )
                })
            })
            .collect();
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Span>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a watcher thread panicked")))
        };
        let learned = learned.into_iter().map(join).collect::<Result<Vec<_>>>()?;
        Ok((join(serving)?, learned))
    })
}

/// Moves the calling thread (only it: sockets it opens from now on live there) into the
/// network namespace at `path`.
fn in_netns(path: &str) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering the network namespace {path}"))
}

/// One linearizable read through a fresh client (a member that restarted is not waited for
/// by a connection to its former self): it is answered only when a leader holds a quorum.
async fn linearizable_read(urls: &[String]) -> Result<()> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(300))
        .with_timeout(Duration::from_millis(500));
    let mut client = etcd_client::Client::connect(urls, Some(opts)).await?;
    client.get("/wgcable-e2e-probe", None).await?;
    Ok(())
}

/// The next free underlay address for a gateway that moves (192.168.77.1X -> .3X, and back).
fn next_ip(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let d = if d >= 30 { d - 20 } else { d + 20 };
    Ipv4Addr::new(a, b, c, d)
}
