//! Helpers shared by the scenarios.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{TRANSFER_PORT, WAIT};
use crate::cmd::{poll, read, spawn};
use crate::state::{self, Sample};
use crate::topology::{self, Family, Topology};

/// Starts any gateway that is not running and waits until every one reports every other
/// connected: the state each scenario starts from.
pub(super) fn ensure_mesh(topo: &mut Topology) -> Result<()> {
    for i in 0..topo.clusters.len() {
        if !topo.gateway_running(i) {
            topo.start_gateway(i)?;
        }
    }
    wait_mesh(topo, WAIT).context("precondition: the full mesh")
}

pub(super) fn wait_mesh(topo: &Topology, timeout: Duration) -> Result<()> {
    for i in 0..topo.clusters.len() {
        state::wait_connected(topo, i, &topo.remotes(i), timeout)?;
    }
    Ok(())
}

/// Waits until pod `from` gets an answer from pod `to` over IPv4; returns how long it took.
pub(super) fn wait_ping(
    topo: &Topology,
    from: usize,
    to: usize,
    timeout: Duration,
) -> Result<Duration> {
    wait_ping_of(topo, from, to, Family::V4, timeout)
}

/// Waits until pod `from` gets an answer from pod `to`'s address of `family`.
pub(super) fn wait_ping_of(
    topo: &Topology,
    from: usize,
    to: usize,
    family: Family,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let dst = topo.clusters[to].pod_addr(family).to_string();
    let what = format!(
        "pod-{} to answer an {} ping from pod-{}",
        topo.clusters[to].id,
        family.name(),
        topo.clusters[from].id
    );
    poll(&what, timeout, || {
        ensure!(state::ping_once(topo, from, &dst)?, "no reply from {dst}");
        Ok(start.elapsed())
    })
}

/// Pings every pod from every other pod at its address of `family`; fails on any loss.
/// Returns the number of pairs.
pub(super) fn ping_all_pairs(topo: &Topology, count: u32, family: Family) -> Result<usize> {
    let mut pairs = 0;
    for from in 0..topo.clusters.len() {
        for to in 0..topo.clusters.len() {
            if from == to {
                continue;
            }
            let dst = topo.clusters[to].pod_addr(family).to_string();
            let (sent, received) = state::ping_many(topo, from, &dst, count)?;
            ensure!(
                sent == u64::from(count) && received == sent,
                "pod-{} -> pod-{} ({dst}): {received} of {sent} {} pings answered",
                topo.clusters[from].id,
                topo.clusters[to].id,
                family.name()
            );
            pairs += 1;
        }
    }
    Ok(pairs)
}

/// The IPv4 subnets of the clusters other than `i`, sorted.
pub(super) fn remote_subnets(topo: &Topology, i: usize) -> Vec<String> {
    remote_subnets_of(topo, i, Family::V4)
}

/// The subnets of `family` of the clusters other than `i`, sorted.
pub(super) fn remote_subnets_of(topo: &Topology, i: usize, family: Family) -> Vec<String> {
    let mut subnets: Vec<String> = topo
        .clusters
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, c)| c.subnet_of(family).to_string())
        .collect();
    subnets.sort();
    subnets
}

/// Sends `bytes` from pod `from` to pod `to`'s address of `family` over TCP and compares both
/// sides' SHA-256. Returns the throughput in MB/s.
pub(super) fn transfer(
    topo: &Topology,
    from: usize,
    to: usize,
    family: Family,
    bytes: u64,
) -> Result<f64> {
    let exe = topology::xtask_exe()?;
    let dst = topo.clusters[to].pod_addr(family).to_string();
    // The receiver listens on that one address, so only a connection of that family to it
    // can deliver the bytes.
    let mut receiver = spawn(
        topo.pod(to, &exe, ["internal", "tcp-recv", TRANSFER_PORT, &dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let stdout = receiver.stdout.take().context("receiver stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // The receiver prints `listening` once it listens: only then may the sender connect.
    let first = lines.next().transpose()?.unwrap_or_default();
    ensure!(
        first == "listening",
        "tcp-recv did not start listening (printed {first:?})"
    );
    let start = Instant::now();
    let sent = read(&mut topo.pod(
        from,
        &exe,
        [
            "internal",
            "tcp-send",
            &dst,
            TRANSFER_PORT,
            &bytes.to_string(),
        ],
    ));
    let elapsed = start.elapsed();
    if sent.is_err() {
        let _ = receiver.kill();
    }
    let received = lines.next().transpose()?.unwrap_or_default();
    receiver.wait()?;
    let sent = sent?;
    let sent = sent.trim();
    ensure!(
        sent == received && sent.starts_with(&format!("bytes={bytes} ")),
        "transfer corrupted: sender {sent:?}, receiver {received:?}"
    );
    Ok(bytes as f64 / 1e6 / elapsed.as_secs_f64())
}

/// The first sample called `name` whose `remote_cluster` is `remote`.
pub(super) fn find<'a>(samples: &'a [Sample], name: &str, remote: &str) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && s.label("remote_cluster") == Some(remote))
}

/// Writes `content` to the broker dir as `name` the way gateways do: a hidden temporary file
/// (which watchers ignore) renamed into place, so no reader sees half a file.
pub(super) fn write_broker_file(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".xtask-{name}.tmp"));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    let path = dir.join(name);
    eprintln!("xtask: writing {}", path.display());
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
