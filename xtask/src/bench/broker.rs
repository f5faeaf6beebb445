//! Cases 8 and 9: the etcd broker against the file broker, in the same run, on the same
//! single-gateway topology.
//!
//! - 8, propagation: one remote cluster's Endpoint changes (a new public key) 100 times; each
//!   change is timed from the moment it is written (the file renamed into the broker directory,
//!   or the put handed to an etcd client that is already connected: `xtask internal
//!   etcd-writer`) to the new peer showing on the gateway's device. Median and p99.
//! - 9, cold start: a gateway starts (no device, nothing to adopt) against 1,000 Endpoints
//!   (1,000 files, or 1,000 keys in a 3-member etcd) and is timed until all 1,000 peers are on
//!   its device.
//!
//! The device is watched by one `wg show DEVICE peers` loop in the gateway's namespace whose
//! output is read as it comes, so a poll costs no process start-up on our side (resolution:
//! one `wg` run plus a 2 ms pause, a few milliseconds).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wgcable_etcd::testing::{ClusterOptions, EtcdCluster};

use super::*;
use crate::cmd::{self, spawn};
use crate::interrupt;
use crate::topology::{Topology, DEVICE};

/// Changes timed per broker in case 8.
pub(crate) const CHANGES: usize = 100;
/// Endpoints of case 9.
pub(crate) const COLD_ENDPOINTS: u32 = 1000;
const ETCD_LINK: &str = "etcd0";

/// Runs cases 8 and/or 9 on a one-gateway topology of their own.
pub(super) fn broker_cases(
    bin: &std::path::Path,
    runs: usize,
    propagation: bool,
    cold: bool,
    samples: &mut Samples,
) -> Result<()> {
    let mut topo = Topology::build(Options {
        clusters: 1,
        gateway_bin: bin.to_path_buf(),
        gateway_args: vec!["--status-interval".into(), "1s".into()],
        keep: false,
    })?;
    // The generated remote gateways sit behind a next hop that never answers.
    route_to_fake_underlay(&topo, 0)?;
    let mut opts = ClusterOptions::new();
    opts.prefix = format!("{}etcd-", topo.prefix);
    opts.net = [10, 99, 0];
    let mut etcd = EtcdCluster::start(opts)?;
    etcd.attach(&topo.clusters[0].gw_ns, ETCD_LINK)?;
    let file_args = topo.broker_args.clone();
    let etcd_args: Vec<String> = vec![
        "--broker".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        etcd.client_urls().join(","),
    ];
    let mut writer = Writer::start(&etcd)?;
    topo.etcd = Some(etcd);

    for r in 0..runs {
        interrupt::check()?;
        println!("-- run {} of {runs}", r + 1);
        if propagation {
            for (name, args) in [("file", &file_args), ("etcd", &etcd_args)] {
                topo.broker_args = args.clone();
                let times = propagate(&mut topo, name, &mut writer)?;
                let (med, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
                println!(
                    "propagation via {name}: median {med:.1} ms, p99 {p99:.1} ms over {} changes",
                    times.len()
                );
                push(samples, &format!("broker.propagation.{name}.median"), med);
                push(samples, &format!("broker.propagation.{name}.p99"), p99);
            }
        }
        if cold {
            for (name, args) in [("file", &file_args), ("etcd", &etcd_args)] {
                topo.broker_args = args.clone();
                let ms = cold_start(&mut topo, name, &mut writer)?;
                println!("cold start via {name} with {COLD_ENDPOINTS} Endpoints: {ms:.0} ms");
                push(samples, &format!("broker.cold.{name}"), ms);
            }
        }
    }
    Ok(())
}

/// Case 8 against one broker: returns the propagation times in ms.
fn propagate(topo: &mut Topology, broker: &str, writer: &mut Writer) -> Result<Vec<f64>> {
    clear(topo, writer)?;
    topo.start_gateway(0)?;
    let mut watch = PeerWatch::start(topo)?;
    let staging = topo.run_dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    let mut times = Vec::with_capacity(CHANGES);
    // One change first, untimed: the gateway's first listing or scan is not what is measured.
    for i in 0..=CHANGES {
        interrupt::check()?;
        let (yaml, key) = changed_endpoint(broker, i);
        let started = match broker {
            "file" => {
                let tmp = topo.broker_dir.join(".bench-q.yaml.tmp");
                std::fs::write(&tmp, &yaml)?;
                let t = Instant::now();
                std::fs::rename(&tmp, topo.broker_dir.join("bench-q.yaml"))?;
                t
            }
            _ => {
                let path = staging.join("q.yaml");
                std::fs::write(&path, &yaml)?;
                let t = Instant::now();
                writer.put("/wgcable/endpoints/bench-q", &path)?;
                t
            }
        };
        if let Err(e) = watch.wait_for(|peers| peers.iter().any(|p| p == &key), WAIT) {
            topo.print_log_tails(30);
            return Err(e.context(format!("change {i} via {broker}")));
        }
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(watch);
    topo.stop_gateway(0)?;
    Ok(times)
}

/// Case 9 against one broker: ms from start to every peer configured.
fn cold_start(topo: &mut Topology, broker: &str, writer: &mut Writer) -> Result<f64> {
    clear(topo, writer)?;
    match broker {
        "file" => footprint::write_endpoints(&topo.broker_dir, COLD_ENDPOINTS)?,
        _ => {
            let staging = topo.run_dir.join("staging");
            std::fs::create_dir_all(&staging)?;
            footprint::write_endpoints(&staging, COLD_ENDPOINTS)?;
            for i in 0..COLD_ENDPOINTS {
                // The key names the cluster (`c<i>`, as in the file): another key is an impostor.
                writer.put(
                    &format!("/wgcable/endpoints/c{i}"),
                    &staging.join(format!("c{i}.yaml")),
                )?;
            }
        }
    }
    let started = Instant::now();
    topo.start_gateway(0)?;
    let mut watch = PeerWatch::start(topo)?;
    if let Err(e) = watch.wait_for(|peers| peers.len() == COLD_ENDPOINTS as usize, WAIT) {
        topo.print_log_tails(30);
        return Err(e.context(format!("cold start via {broker}")));
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(watch);
    topo.stop_gateway(0)?;
    Ok(ms)
}

/// Removes every generated Endpoint from both brokers and everything from the host, so the
/// next gateway start is cold.
fn clear(topo: &mut Topology, writer: &mut Writer) -> Result<()> {
    if topo.gateway_running(0) {
        topo.stop_gateway(0)?;
    }
    footprint::write_endpoints(&topo.broker_dir, 0)?;
    let q = topo.broker_dir.join("bench-q.yaml");
    if q.exists() {
        std::fs::remove_file(&q)?;
    }
    writer.del_prefix("/wgcable/endpoints/")?;
    let _ = cmd::output(&mut topo.gw(0, &topo.gateway_bin, ["cleanup"]));
    Ok(())
}

/// Change `i` of the remote cluster `bench-q`: a new public key each time.
fn changed_endpoint(broker: &str, i: usize) -> (String, String) {
    use sha2::{Digest, Sha256};
    let key = footprint::base64(&Sha256::digest(
        format!("wgcable bench change {broker} {i}").as_bytes(),
    ));
    let yaml = format!(
        "apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  name: bench-q-cable\nspec:\n  \
         cluster_id: bench-q\n  cable_name: submariner-cable-bench-q\n  hostname: gw-bench-q\n  \
         backend: wireguard\n  backend_config:\n    publicKey: {key}\n  private_ip: 198.18.255.1\n  \
         subnets: [10.255.0.0/24]\n"
    );
    (yaml, key)
}

/// `p`-th percentile (nearest rank) of `values`.
pub(super) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// `xtask internal etcd-writer` in the etcd hub namespace.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    hub: String,
    urls: String,
}

impl Writer {
    fn start(etcd: &EtcdCluster) -> Result<Writer> {
        let exe = crate::topology::xtask_exe()?;
        let urls = etcd.client_urls().join(",");
        let mut child = spawn(
            cmd::cmd("ip", ["netns", "exec", &etcd.hub])
                .arg(exe)
                .args(["internal", "etcd-writer", &urls])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        let stdin = child.stdin.take().context("writer stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("writer stdout")?);
        Ok(Writer {
            child,
            stdin,
            stdout,
            hub: etcd.hub.clone(),
            urls,
        })
    }

    fn command(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        self.stdout.read_line(&mut answer)?;
        ensure!(
            answer.trim() == "ok",
            "etcd-writer: {line}: {}",
            answer.trim()
        );
        Ok(())
    }

    fn put(&mut self, key: &str, file: &std::path::Path) -> Result<()> {
        self.command(&format!("put {key} {}", file.display()))
    }

    fn del_prefix(&mut self, prefix: &str) -> Result<()> {
        // etcdctl for the one range delete (the writer knows single keys only).
        cmd::read(&mut cmd::cmd(
            "ip",
            [
                "netns",
                "exec",
                &self.hub,
                "etcdctl",
                &format!("--endpoints={}", self.urls),
                "del",
                "--prefix",
                prefix,
            ],
        ))
        .map(|_| ())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `wg show DEVICE peers` loop in the gateway's namespace, read as it prints.
struct PeerWatch {
    child: Child,
    snapshots: mpsc::Receiver<Vec<String>>,
}

impl PeerWatch {
    fn start(topo: &Topology) -> Result<PeerWatch> {
        // A short sleep between runs: a loop at full speed would take a core from the gateway.
        let script =
            format!("while :; do wg show {DEVICE} peers 2>/dev/null; echo --; sleep 0.002; done");
        let mut child = spawn(
            topo.gw(0, "sh", ["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        )?;
        let stdout = child.stdout.take().context("wg loop stdout")?;
        let (tx, snapshots) = mpsc::channel();
        std::thread::spawn(move || {
            let mut current = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "--" {
                    if tx.send(std::mem::take(&mut current)).is_err() {
                        return;
                    }
                } else {
                    current.push(line);
                }
            }
        });
        Ok(PeerWatch { child, snapshots })
    }

    /// Waits for a listing of the device's peers that satisfies `want`.
    fn wait_for(&mut self, want: impl Fn(&[String]) -> bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let peers = self
                .snapshots
                .recv_timeout(left)
                .context("the device never showed the expected peers")?;
            if want(&peers) {
                return Ok(());
            }
        }
    }
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn every_change_has_a_new_key() {
        let (a, ka) = changed_endpoint("etcd", 1);
        let (b, kb) = changed_endpoint("etcd", 2);
        assert_ne!(ka, kb);
        assert!(a.contains(&ka) && b.contains(&kb));
    }
}
