//! What the etcd scenarios share: the switch of the topology to a real 3-member etcd cluster
//! (`wgcable_etcd::testing`, the harness of the crate's own tests), a pinger that counts lost
//! replies, and reading the broker's state out of etcd.
//!
//! The etcd members sit on an etcd network of their own (10.99.0.0/24), and every gateway
//! namespace gets a second link `etcd0` onto it: cutting a gateway's path to etcd is then
//! `ip link set etcd0 down` in its namespace, which leaves its tunnels (over `eth0`) alone.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wgcable_etcd::testing::{ClusterOptions, EtcdCluster};

use super::*;
use crate::cmd::{self, poll, spawn};
use crate::topology::{Family, Topology};

/// The link of each gateway namespace onto the etcd network.
pub(super) const ETCD_LINK: &str = "etcd0";
/// The etcd network's first three octets.
const ETCD_NET: [u8; 3] = [10, 99, 0];
/// The prefix the gateways use (the default).
pub(super) const PREFIX: &str = "/wgcable";

/// The etcd key of a cluster's Endpoint.
pub(super) fn key(id: &str) -> String {
    format!("{PREFIX}/endpoints/{id}")
}

/// Starts the etcd cluster (once), attaches every gateway namespace to it, and restarts every
/// gateway on it from a clean state (`wgcable cleanup`, a fresh key): from then on, a
/// connection can only have been set up through etcd. Then waits for the full mesh.
pub(super) fn ensure_etcd_mesh(topo: &mut Topology) -> Result<()> {
    if topo.etcd.is_none() {
        for i in 0..topo.clusters.len() {
            if topo.gateway_running(i) {
                topo.stop_gateway(i)?;
            }
            let _ = cmd::output(&mut topo.gw(i, &topo.gateway_bin, ["cleanup"]));
            let dir = topo.clusters[i].state_dir.clone();
            if dir.exists() {
                eprintln!("$ rm -rf {}", dir.display());
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let mut opts = ClusterOptions::new();
        opts.prefix = format!("{}etcd-", topo.prefix);
        opts.net = ETCD_NET;
        let mut etcd = EtcdCluster::start(opts).context("starting the 3-member etcd cluster")?;
        for c in &topo.clusters {
            etcd.attach(&c.gw_ns, ETCD_LINK)?;
        }
        topo.broker_args = vec![
            "--broker".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            etcd.client_urls().join(","),
        ];
        topo.etcd = Some(etcd);
    }
    ensure_mesh(topo)
}

pub(super) fn etcd(topo: &Topology) -> Result<&EtcdCluster> {
    topo.etcd
        .as_ref()
        .context("the etcd cluster is not running")
}

pub(super) fn etcd_mut(topo: &mut Topology) -> Result<&mut EtcdCluster> {
    topo.etcd
        .as_mut()
        .context("the etcd cluster is not running")
}

/// The Endpoints in etcd: (cluster id from the key, value), in key order.
pub(super) fn broker_state(topo: &Topology) -> Result<Vec<(String, String)>> {
    let etcd = etcd(topo)?;
    let dir = format!("{PREFIX}/endpoints/");
    let keys = etcd.ctl(["get", "--prefix", &dir, "--keys-only"])?;
    let mut state = Vec::new();
    for k in keys.lines().filter(|l| !l.is_empty()) {
        let value = etcd.ctl(["get", k, "--print-value-only"])?;
        if let Some(id) = k.strip_prefix(&dir) {
            state.push((id.to_string(), value));
        }
    }
    Ok(state)
}

/// The WireGuard public key in an Endpoint's YAML (`publicKey: ...` of backend_config).
pub(super) fn public_key_in(yaml: &str) -> Option<String> {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("publicKey:"))
        .map(|k| k.trim().trim_matches('"').trim_matches('\'').to_string())
}

/// The endpoint IP cluster `i` has for `remote` (from the Endpoint its broker delivered, as
/// `/connections` shows it; WireGuard's own endpoint may have roamed already).
pub(super) fn remote_ip(topo: &Topology, i: usize, remote: &str) -> Result<Option<String>> {
    remote_ip_in(&crate::state::http(topo, i, "/connections")?, remote)
}

/// [`remote_ip`] read from a `/connections` body.
pub(super) fn remote_ip_in(json: &str, remote: &str) -> Result<Option<String>> {
    let conns: Vec<serde_json::Value> = serde_json::from_str(json).context("/connections")?;
    Ok(conns
        .iter()
        .find(|c| c.pointer("/endpoint/cluster_id").and_then(|v| v.as_str()) == Some(remote))
        .and_then(|c| c.pointer("/endpoint/private_ip"))
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

/// A `ping -i 0.1` (10/s) from one pod to another that runs until stopped, counting replies.
pub(super) struct Pinger {
    what: String,
    child: Child,
    seqs: Arc<Mutex<BTreeSet<u64>>>,
    reader: Option<JoinHandle<Vec<String>>>,
}

impl Pinger {
    pub(super) fn start(topo: &Topology, from: usize, to: usize, family: Family) -> Result<Pinger> {
        let dst = topo.clusters[to].pod_addr(family).to_string();
        let what = format!(
            "{} ping pod-{} -> pod-{}",
            family.name(),
            topo.clusters[from].id,
            topo.clusters[to].id
        );
        let mut child = spawn(
            topo.pod(from, "ping", ["-n", "-i", "0.1", "-W", "1", &dst])
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        )?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let seqs = Arc::new(Mutex::new(BTreeSet::new()));
        let reader = {
            let seqs = Arc::clone(&seqs);
            std::thread::spawn(move || {
                let mut all = Vec::new();
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(seq) = reply_seq(&line) {
                        seqs.lock()
                            .expect("no panics while holding the lock")
                            .insert(seq);
                    }
                    all.push(line);
                }
                all
            })
        };
        let p = Pinger {
            what,
            child,
            seqs,
            reader: Some(reader),
        };
        poll(&format!("{} to get replies", p.what), WAIT, || {
            ensure!(p.replies() >= 5, "{} replies so far", p.replies());
            Ok(())
        })?;
        Ok(p)
    }

    pub(super) fn replies(&self) -> usize {
        self.seqs
            .lock()
            .expect("no panics while holding the lock")
            .len()
    }

    /// Stops the ping; returns (sent, lost, the runs of lost pings as "seq 12-157 (1.1-15.6 s
    /// in)": when they were lost in the scenario says what lost them). The last second's pings,
    /// still in flight, are not counted.
    pub(super) fn stop(mut self) -> Result<(u64, u64, String)> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid")?);
        let _ = kill(pid, Signal::SIGINT);
        self.child.wait()?;
        let lines = self
            .reader
            .take()
            .context("reader")?
            .join()
            .map_err(|_| anyhow::anyhow!("the ping reader panicked"))?;
        let (sent, _) = crate::state::parse_ping(&lines.join("\n"))?;
        let counted = sent.saturating_sub(10);
        let seqs = self.seqs.lock().expect("no panics while holding the lock");
        let missing: Vec<u64> = (1..=counted).filter(|s| !seqs.contains(s)).collect();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &s in &missing {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => runs.push((s, s)),
            }
        }
        let gaps = runs
            .iter()
            .map(|(a, b)| {
                // ping -i 0.1 numbers from 1, one every 100 ms.
                let at = |s: u64| (s - 1) as f64 / 10.0;
                format!("seq {a}-{b} ({:.1}-{:.1} s in)", at(*a), at(*b))
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok((counted, missing.len() as u64, gaps))
    }

    pub(super) fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `icmp_seq` of a ping reply line.
fn reply_seq(line: &str) -> Option<u64> {
    if !line.contains("bytes from") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))
        .and_then(|n| n.parse().ok())
}

/// Stops every pinger and fails if any lost a reply; returns "N sent, 0 lost" per pinger.
pub(super) fn stop_all(pingers: Vec<Pinger>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for p in pingers {
        let what = p.what().to_string();
        let (sent, lost, gaps) = p.stop()?;
        out.push(format!("{what}: {sent} sent, {lost} lost"));
        if lost > 0 {
            failures.push(format!("{what}: {lost} of {sent} lost: {gaps}"));
        }
    }
    ensure!(failures.is_empty(), "pings lost: {}", failures.join("; "));
    Ok(out)
}

/// Waits until gateway `i`'s log (after `offset`) mentions every one of `needles`.
pub(super) fn wait_logged(topo: &Topology, i: usize, offset: u64, needles: &[&str]) -> Result<()> {
    let id = topo.clusters[i].id.clone();
    poll(&format!("gateway {id} to log {needles:?}"), WAIT, || {
        let log = topo.log_since(i, offset);
        let missing: Vec<&&str> = needles.iter().filter(|n| !log.contains(**n)).collect();
        ensure!(missing.is_empty(), "not yet logged: {missing:?}");
        Ok(())
    })
}

/// Puts the Endpoint of a cluster that does not exist (no gateway behind it) into etcd.
pub(super) fn put_fake(topo: &Topology, id: &str, subnet: &str, ip: &str) -> Result<String> {
    let public_key = fresh_public_key()?;
    let yaml = super::bad_input::endpoint_yaml(id, subnet, ip, &public_key);
    etcd(topo)?.put(&key(id), yaml.as_bytes())?;
    Ok(public_key)
}

/// Sleeps in steps, so that Ctrl-C still ends the wait at once.
pub(super) fn hold(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_give_their_sequence() {
        assert_eq!(
            reply_seq("64 bytes from 10.202.1.10: icmp_seq=17 ttl=62 time=0.3 ms"),
            Some(17)
        );
        assert_eq!(
            reply_seq("From 10.201.1.1 icmp_seq=3 Destination Host Unreachable"),
            None
        );
        assert_eq!(
            public_key_in("  backend_config:\n    publicKey: abc=\n"),
            Some("abc=".into())
        );
    }
}
