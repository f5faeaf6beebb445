//! Case 7: pod-to-pod throughput through the gateways against wireguard-go set up by hand.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::*;
use crate::cmd::{self, cmd, poll, read, spawn};
use crate::interrupt;
use crate::state;
use crate::topology::{Options, Topology, DEVICE, TABLE};

/// A twin of the two-cluster topology with `wireguard-go` configured by hand, as an operator
/// would with `wg` and `ip`: MTU 1420, one peer, a route to the other pod subnet.
pub(super) fn hand_tunnel(bin: &Path) -> Result<Topology> {
    let topo = Topology::build(Options {
        clusters: 2,
        gateway_bin: bin.to_path_buf(),
        gateway_args: Vec::new(),
        keep: false,
    })?;
    let mut public = Vec::new();
    for i in 0..2 {
        let key_file = topo.run_dir.join(format!("wgbase-{i}.key"));
        let private = read(&mut cmd("wg", ["genkey"]))?;
        std::fs::write(&key_file, &private)?;
        let mut c = cmd("wg", ["pubkey"]);
        c.stdin(std::fs::File::open(&key_file)?);
        let out = c.output().context("running wg pubkey")?;
        ensure!(out.status.success(), "wg pubkey failed");
        public.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    for i in 0..2 {
        let j = 1 - i;
        let key_file = topo.run_dir.join(format!("wgbase-{i}.key"));
        cmd::run(
            topo.gw(i, "wireguard-go", ["wgbase"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        cmd::run(&mut topo.gw(
            i,
            "wg",
            [
                "set".as_ref(),
                "wgbase".as_ref(),
                "listen-port".as_ref(),
                "4500".as_ref(),
                "private-key".as_ref(),
                key_file.as_os_str(),
                "peer".as_ref(),
                public[j].as_ref(),
                "endpoint".as_ref(),
                format!("{}:4500", topo.clusters[j].underlay_ip).as_ref(),
                "allowed-ips".as_ref(),
                topo.clusters[j].subnet.as_ref(),
            ],
        ))?;
        cmd::run(&mut topo.ip(i, ["link", "set", "wgbase", "mtu", "1420", "up"]))?;
        cmd::run(&mut topo.ip(
            i,
            ["route", "add", &topo.clusters[j].subnet, "dev", "wgbase"],
        ))?;
    }
    Ok(topo)
}

/// One iperf3 transfer from pod a to pod b, in Mbit/s as received.
pub(super) fn iperf(topo: &Topology) -> Result<f64> {
    let dst = topo.clusters[1].pod_ip.to_string();
    let mut server = spawn(
        topo.pod(1, "iperf3", ["-s", "-1", "-p", IPERF_PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let listening = poll("iperf3 to listen in pod b", Duration::from_secs(10), || {
        let out = read(&mut topo.pod(1, "ss", ["-Hltn", &format!("sport = :{IPERF_PORT}")]))?;
        ensure!(!out.trim().is_empty(), "not listening yet");
        Ok(())
    });
    if let Err(e) = listening {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    let json = read(&mut topo.pod(
        0,
        "iperf3",
        [
            "-c",
            &dst,
            "-p",
            IPERF_PORT,
            "-t",
            &IPERF_SECS.to_string(),
            "-J",
        ],
    ));
    let _ = server.wait();
    parse_iperf_mbps(&json?)
}

pub(super) fn parse_iperf_mbps(json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(json).context("parsing iperf3 -J output")?;
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 reported no end.sum_received.bits_per_second")?;
    Ok(bps / 1e6)
}

pub(super) fn throughput(mesh: &mut Topology, runs: usize, samples: &mut Samples) -> Result<()> {
    let mtu = read(&mut mesh.ip(0, ["-j", "link", "show", DEVICE]))?;
    let mtu: Vec<Value> = serde_json::from_str(&mtu).context("parsing ip -j link")?;
    let mtu = mtu
        .first()
        .and_then(|l| l.get("mtu"))
        .and_then(Value::as_u64)
        .context("no MTU on the gateway's device")?;
    println!("the gateway chose MTU {mtu} for {DEVICE} (underlay 1500)");
    push(samples, "throughput.auto_mtu", mtu as f64);
    let routes = state::routes(mesh, 0)?;
    ensure!(
        routes.contains(&mesh.clusters[1].subnet),
        "gateway a has no route to {} in table {TABLE}",
        mesh.clusters[1].subnet
    );
    let bin = mesh.gateway_bin.clone();
    let hand = hand_tunnel(&bin)?;
    // Both directions work before anything is timed.
    let dst = hand.clusters[1].pod_ip.to_string();
    poll(
        "the hand-made tunnel to pass a ping",
        Duration::from_secs(20),
        || {
            ensure!(state::ping_once(&hand, 0, &dst)?, "no reply");
            Ok(())
        },
    )?;
    // Alternated, so that a busy moment of the machine does not land on one side only.
    for r in 0..runs {
        interrupt::check()?;
        let ours = iperf(mesh)?;
        let theirs = iperf(&hand)?;
        println!(
            "run {} of {runs}: pod a -> pod b through wgcable {ours:.0} Mbit/s, through the hand-made wireguard-go tunnel {theirs:.0} Mbit/s",
            r + 1
        );
        push(samples, "throughput.wgcable", ours);
        push(samples, "throughput.baseline", theirs);
    }
    Ok(())
}
