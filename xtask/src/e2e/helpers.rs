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

/// A `ping -D` at 10/s from a pod that runs while a scenario does other things; replies are
/// collected on a thread of their own. [`BackgroundPing::stop`] ends it with SIGINT and
/// returns ping's own summary and the longest silence between two replies.
pub(super) struct BackgroundPing {
    child: std::process::Child,
    /// The time stamp (`-D`) of every reply, in order.
    replies: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
    summary: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub what: String,
}

/// What a [`BackgroundPing`] saw.
#[derive(Debug, Clone, Copy)]
pub(super) struct PingSummary {
    pub sent: u64,
    pub received: u64,
    /// The longest time between two consecutive replies (0.1 s when none was lost).
    pub longest_gap: Duration,
}

impl PingSummary {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

impl BackgroundPing {
    pub fn start(topo: &Topology, from: usize, to: usize) -> Result<BackgroundPing> {
        let dst = topo.clusters[to].pod_ip.to_string();
        let mut child = spawn(
            topo.pod(from, "ping", ["-n", "-D", "-i", "0.1", "-W", "1", &dst])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let summary = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (replies, summary) = (replies.clone(), summary.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    match reply_stamp(&line) {
                        Some(at) => replies
                            .lock()
                            .expect("no panics while holding the lock")
                            .push(at),
                        None => summary
                            .lock()
                            .expect("no panics while holding the lock")
                            .push(line),
                    }
                }
            })
        };
        Ok(BackgroundPing {
            child,
            replies,
            summary,
            reader: Some(reader),
            what: format!(
                "pod-{} -> pod-{} ping at 10/s",
                topo.clusters[from].id, topo.clusters[to].id
            ),
        })
    }

    /// Replies so far.
    pub fn replies(&self) -> usize {
        self.replies
            .lock()
            .expect("no panics while holding the lock")
            .len()
    }

    /// Waits until `n` more replies than now came in.
    pub fn wait_more(&self, n: usize, timeout: Duration) -> Result<()> {
        let seen = self.replies();
        poll(
            &format!("{n} more replies of the {}", self.what),
            timeout,
            || {
                let now = self.replies();
                ensure!(now >= seen + n, "{} so far", now - seen);
                Ok(())
            },
        )
    }

    /// The reply time stamps (seconds since the epoch) from `since` on.
    pub fn reply_times_since(&self, since: std::time::SystemTime) -> Vec<f64> {
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.replies
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }

    /// The longest silence between consecutive replies from `since` on (and from `since` to
    /// the first reply after it).
    pub fn longest_gap_since(&self, since: std::time::SystemTime) -> Duration {
        let start = since
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        longest_gap(start, &self.reply_times_since(since))
    }

    pub fn stop(mut self) -> Result<PingSummary> {
        self.interrupt();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let text = self
            .summary
            .lock()
            .expect("no panics while holding the lock")
            .join("\n");
        let (sent, received) = state::parse_ping(&text)?;
        let replies = self
            .replies
            .lock()
            .expect("no panics while holding the lock")
            .clone();
        let first = replies.first().copied().unwrap_or_default();
        Ok(PingSummary {
            sent,
            received,
            longest_gap: longest_gap(first, &replies),
        })
    }

    fn interrupt(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            eprintln!("$ kill -INT {pid}   # {}", self.what);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        // stop() takes the reader; a ping still running here is ended on an error path.
        if self.reader.is_some() {
            self.interrupt();
            let _ = self.child.wait();
        }
    }
}

/// The `[seconds.micros]` stamp of a `ping -D` reply line.
fn reply_stamp(line: &str) -> Option<f64> {
    if !line.contains("bytes from") {
        return None;
    }
    line.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

/// The longest interval between `start` and the first stamp, and between consecutive stamps.
fn longest_gap(start: f64, stamps: &[f64]) -> Duration {
    let mut prev = start;
    let mut gap: f64 = 0.0;
    for &t in stamps {
        gap = gap.max(t - prev);
        prev = t;
    }
    Duration::from_secs_f64(gap.max(0.0))
}

/// A fresh WireGuard public key (`wg genkey | wg pubkey`), for Endpoints of clusters that do
/// not exist (hostile or fake ones).
pub(super) fn fresh_public_key() -> Result<String> {
    use std::io::{Read, Write};
    let private = read(&mut crate::cmd::cmd("wg", ["genkey"]))?;
    eprintln!("$ wg pubkey   # of a fresh key");
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `wg pubkey`")?;
    child
        .stdin
        .take()
        .context("wg stdin")?
        .write_all(private.as_bytes())?;
    let mut key = String::new();
    child
        .stdout
        .take()
        .context("wg stdout")?
        .read_to_string(&mut key)?;
    ensure!(child.wait()?.success(), "`wg pubkey` failed");
    Ok(key.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_reply_stamps_and_gaps() {
        assert_eq!(
            reply_stamp(
                "[1700000000.250000] 64 bytes from 10.203.1.10: icmp_seq=3 ttl=62 time=0.9 ms"
            ),
            Some(1_700_000_000.25)
        );
        assert_eq!(
            reply_stamp("[1700000000.1] From 10.201.1.1 icmp_seq=1 Destination Net Unreachable"),
            None
        );
        assert_eq!(
            reply_stamp("5 packets transmitted, 5 received, 0% packet loss"),
            None
        );
        let gap = longest_gap(10.0, &[10.1, 10.2, 11.7, 11.8]);
        assert!((gap.as_secs_f64() - 1.5).abs() < 1e-9, "{gap:?}");
        assert_eq!(longest_gap(10.0, &[]), Duration::ZERO);
    }
}
