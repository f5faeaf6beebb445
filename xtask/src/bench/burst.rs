//! Cases 10 and 11: a burst of Endpoints at a running gateway (issue 13: 5,000 files at once
//! took 415 s and 192 s of CPU in round 1).
//!
//! - 10: [`BURST`] Endpoint files appear in the broker directory at once (written beside it
//!   first, then renamed in, about 5,000 renames in a few tens of milliseconds) while the real
//!   gateway runs (release build, userspace backend, the file broker, default intervals);
//!   timed from the first rename until every peer is on its `wireguard-go` device and every
//!   route in table 150 (`wg show DEVICE peers`, `ip route show table 150`, polled every
//!   [`POLL`]). Target: under 10 s. The gateway's CPU time over the same interval is reported.
//! - 11: [`BURST_REMOVED`] of those files deleted at once, timed until their peers and routes
//!   are gone. Target: under 2 s.
//!
//! Baseline, same run, same namespace: the same peers (with a pre-shared key, as the gateway
//! sets them) and routes by hand on a second `wireguard-go` device, `wg setconf` and one `ip
//! -batch`; removal with one `wg set ... peer K remove ...` and one `ip -batch`. It is what
//! `wireguard-go` and the kernel need for the work itself, so the ratio says what the broker,
//! admission and the driver add.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::*;
use crate::cmd::{self, cmd, poll, read};
use crate::interrupt;
use crate::state;
use crate::topology::{Options, Topology, DEVICE, TABLE};

/// Endpoints arriving at once (case 10).
pub(crate) const BURST: u32 = 5000;
/// Endpoints removed at once (case 11).
pub(crate) const BURST_REMOVED: u32 = 1000;
/// How often the device and the routes are read while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How long one burst may take before the run is given up.
const BURST_WAIT: Duration = Duration::from_secs(120);
const BASELINE_DEVICE: &str = "wgbase";
/// The baseline's routes go to a table of their own.
const BASELINE_TABLE: u32 = 151;

/// Peers on `device` and routes in `table` in gateway namespace 0.
fn counts(topo: &Topology, device: &str, table: u32) -> Result<(usize, usize)> {
    let peers = read(&mut topo.gw(0, "wg", ["show", device, "peers"]))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let routes = read(&mut topo.ip(0, ["route", "show", "table", &table.to_string()]))?
        .lines()
        .count();
    Ok((peers, routes))
}

/// Waits until gateway 0 has `peers` peers and `2 * peers` routes; returns the time since
/// `since`.
fn wait_counts(topo: &Topology, peers: usize, since: Instant) -> Result<Duration> {
    crate::cmd::poll_every(
        &format!("{peers} peers and {} routes on the gateway", 2 * peers),
        BURST_WAIT,
        POLL,
        || {
            let (p, r) = counts(topo, DEVICE, TABLE)?;
            ensure!(
                p == peers && r == 2 * peers,
                "{p} peers and {r} routes so far"
            );
            Ok(since.elapsed())
        },
    )
}

/// Endpoint file of generated cluster `i` (named after its cluster id, as the file broker
/// requires).
fn file_name(i: u32) -> String {
    format!("c{i}.yaml")
}

pub(super) fn burst(bin: &Path, runs: usize, samples: &mut Samples) -> Result<()> {
    let mut topo = Topology::build(Options {
        clusters: 1,
        gateway_bin: bin.to_path_buf(),
        gateway_args: Vec::new(),
        keep: false,
    })?;
    // The generated remote gateways sit behind a next hop that never answers.
    route_to_fake_underlay(&topo, 0)?;
    let broker = topo.broker_dir.clone();
    let stage = topo.run_dir.join("stage");
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    for i in 0..BURST {
        let path = stage.join(file_name(i));
        std::fs::write(&path, endpoint_yaml(i))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    topo.start_gateway(0)?;
    poll("the gateway to be ready", WAIT, || {
        state::http(&topo, 0, "/readyz").map(|_| ())
    })?;
    let gateway = pid_of(&topo, 0, "wgcable")?;

    for r in 0..runs {
        interrupt::check()?;
        let offset = topo.log_len(0);
        let ticks = cpu_ticks(gateway)?;
        let start = Instant::now();
        for i in 0..BURST {
            let name = file_name(i);
            std::fs::rename(stage.join(&name), broker.join(&name))
                .with_context(|| format!("moving {name} into the broker directory"))?;
        }
        let moved = start.elapsed();
        let converged = wait_counts(&topo, BURST as usize, start)?;
        let cpu = (cpu_ticks(gateway)? - ticks) as f64 / 100.0;

        let start = Instant::now();
        for i in 0..BURST_REMOVED {
            let name = file_name(i);
            std::fs::rename(broker.join(&name), stage.join(&name))
                .with_context(|| format!("moving {name} out of the broker directory"))?;
        }
        let removed = wait_counts(&topo, (BURST - BURST_REMOVED) as usize, start)?;
        println!(
            "run {} of {runs}: {BURST} Endpoints at once (renamed in within {:.0} ms): all peers and routes on the \
             device after {:.2} s, gateway CPU {cpu:.2} s; {BURST_REMOVED} removed: gone after {:.0} ms",
            r + 1,
            moved.as_secs_f64() * 1000.0,
            converged.as_secs_f64(),
            removed.as_secs_f64() * 1000.0
        );
        push(samples, "burst.converge", converged.as_secs_f64() * 1000.0);
        push(samples, "burst.cpu", cpu);
        push(samples, "burst.remove", removed.as_secs_f64() * 1000.0);
        // What the gateway did meanwhile, in its own words (reconciles and warnings).
        for line in topo.log_since(0, offset).lines() {
            if line.contains("reconciled") || line.contains("WARN") {
                println!("  gateway: {}", &line[..line.len().min(300)]);
            }
        }

        // Back to no remotes for the next run (not timed).
        for i in BURST_REMOVED..BURST {
            let name = file_name(i);
            std::fs::rename(broker.join(&name), stage.join(&name))
                .with_context(|| format!("moving {name} out of the broker directory"))?;
        }
        wait_counts(&topo, 0, Instant::now())?;

        let (add, remove) = baseline(&topo)?;
        println!(
            "run {} of {runs}: baseline by hand: {BURST} peers and routes in {:.2} s, {BURST_REMOVED} removed in {:.0} ms",
            r + 1,
            add.as_secs_f64(),
            remove.as_secs_f64() * 1000.0
        );
        push(
            samples,
            "burst.converge.baseline",
            add.as_secs_f64() * 1000.0,
        );
        push(
            samples,
            "burst.remove.baseline",
            remove.as_secs_f64() * 1000.0,
        );
    }
    topo.stop_gateway(0)?;
    Ok(())
}

/// The same work by hand on a second device: returns (add all, remove BURST_REMOVED).
fn baseline(topo: &Topology) -> Result<(Duration, Duration)> {
    let private = read(&mut cmd("wg", ["genkey"]))?;
    let psk = read(&mut cmd("wg", ["genpsk"]))?;
    let keys: Vec<String> = (0..BURST).map(endpoint_key).collect();
    let subnet = |n: u32| format!("10.{}.{}.0/24", n >> 8, n & 0xff);
    let mut conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 4600\n",
        private.trim()
    );
    let mut add = format!("link set {BASELINE_DEVICE} up\n");
    let mut remove = String::new();
    let mut remove_peers: Vec<String> = vec!["set".into(), BASELINE_DEVICE.into()];
    for i in 0..BURST {
        let (a, b) = (subnet(2 * i), subnet(2 * i + 1));
        let _ = write!(
            conf,
            "\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = 198.18.{}.{}:4500\nAllowedIPs = {a}, {b}\nPersistentKeepalive = 10\n",
            keys[i as usize],
            psk.trim(),
            (i >> 8) & 0xff,
            i & 0xff
        );
        for s in [&a, &b] {
            let _ = writeln!(
                add,
                "route replace {s} dev {BASELINE_DEVICE} table {BASELINE_TABLE}"
            );
            if i < BURST_REMOVED {
                let _ = writeln!(
                    remove,
                    "route del {s} dev {BASELINE_DEVICE} table {BASELINE_TABLE}"
                );
            }
        }
        if i < BURST_REMOVED {
            remove_peers.extend(["peer".into(), keys[i as usize].clone(), "remove".into()]);
        }
    }
    let dir = &topo.run_dir;
    let files = [
        ("wgbase.conf", &conf),
        ("wgbase-add.batch", &add),
        ("wgbase-remove.batch", &remove),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    // wireguard-go daemonizes; its daemon keeps what stdio it is given, so none that we wait on.
    cmd::run(
        topo.gw(0, "wireguard-go", [BASELINE_DEVICE])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )?;
    let result = (|| -> Result<(Duration, Duration)> {
        let start = Instant::now();
        cmd::run(&mut topo.gw(0, "wg", ["setconf", BASELINE_DEVICE, &path("wgbase.conf")]))?;
        cmd::run(&mut topo.ip(0, ["-batch", &path("wgbase-add.batch")]))?;
        let added = start.elapsed();
        let (p, r) = counts(topo, BASELINE_DEVICE, BASELINE_TABLE)?;
        ensure!(
            p == BURST as usize && r == 2 * BURST as usize,
            "the baseline configured {p} peers and {r} routes"
        );
        let start = Instant::now();
        cmd::run(&mut topo.gw(0, "wg", &remove_peers))?;
        cmd::run(&mut topo.ip(0, ["-batch", &path("wgbase-remove.batch")]))?;
        let removed = start.elapsed();
        let (p, r) = counts(topo, BASELINE_DEVICE, BASELINE_TABLE)?;
        let left = (BURST - BURST_REMOVED) as usize;
        ensure!(
            p == left && r == 2 * left,
            "the baseline's removal left {p} peers and {r} routes"
        );
        Ok((added, removed))
    })();
    // wireguard-go exits when its link goes; the routes go with the link.
    cmd::run(&mut topo.ip(0, ["link", "del", BASELINE_DEVICE]))?;
    result
}
