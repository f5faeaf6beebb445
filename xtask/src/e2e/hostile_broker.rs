//! 12. hostile-broker: issue 13's attacks, by someone who can write the broker directory
//!     and nothing else, against the real gateways, while a pod-a -> pod-c ping runs
//!     throughout.
//!
//! Each attack is asserted the same way at every gateway: a log line naming the file and the
//! reason, the reason counted in `wgcable_endpoints_rejected_total{reason}`, and the good
//! tunnels untouched (every gateway's peers, with their keys, endpoints and allowed IPs, and
//! its table 150 routes of both families exactly as before: so no hostile peer or route was
//! installed either). In order:
//!
//! 1. planted at once: links to each gateway's own `private.key`, to `/dev/zero` and to a
//!    FIFO; a FIFO; a 50 MB file; 10,000 and 300 subnets; 50,000 and 16,000 nested flow
//!    lists; an impostor `0-a.yaml` claiming cluster a; subnets that would hijack the underlay
//!    (`128.0.0.0/1`, a /7, the underlay /24, multicast, link-local, loopback, v4-mapped);
//!    endpoint IPs 127.0.0.1, ::1, 255.255.255.255 and the gateways' own;
//! 2. churn: a valid cluster's file rewritten in place (line by line, so readers can see
//!    torn files that still parse) [`CHURN_RATE`] times a second, then flipped between two IPs
//!    by atomic renames as fast: no route in table 150 changes (`ip monitor route`, with a
//!    canary in another table proving the monitor saw the whole window), few reconciles, a
//!    bounded number of log lines;
//! 3. gateway b restarted with the impostor still there: b keeps the real a;
//! 4. b's own Endpoint overwritten with another key and IP: b writes its own back within one
//!    rescan, with a warning, and the others end with b's real key;
//! 5. (the ping stops: the next step restarts every gateway) a squatter `0-zz.yaml` claiming
//!    b's subnets at a fresh start after `wgcable cleanup` on all gateways, with the
//!    admission registries removed too (only creation order decides), and once more with the
//!    registries kept: b's older Endpoint wins at a and c both times;
//! 6. no gateway log holds any private key, the PSK or the WireGuard PSK derived from it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::*;
use crate::bench::base64;
use crate::cmd::{self, poll, spawn};
use crate::state;
use crate::topology::{Family, Topology, PSK, TABLE};

/// Pings the background ping (10/s, pod-a -> pod-c, about 30 s) may lose over all attacks.
const PING_LOSS_BOUND: u64 = 2;
/// Writes per second of the churn, and for how long each kind of churn runs.
const CHURN_RATE: u32 = 1000;
const CHURN_FOR: Duration = Duration::from_secs(3);
/// Log lines one gateway may write while a file churns for 2 x [`CHURN_FOR`] (round 1: 26,364
/// lines in 20 s).
const CHURN_LOG_BOUND: usize = 60;
/// Reconciles one gateway may run in the churn window beyond its resync ticks (round 1:
/// 13,182 in 20 s).
const CHURN_RECONCILE_BOUND: f64 = 5.0;
/// The file source's full rescan period (its default; the e2e gateways keep it).
const RESCAN: Duration = Duration::from_secs(10);
/// The admission registry's file in a state directory (wgcable_broker::admission::registry).
const REGISTRY_FILE: &str = "admission-registry.json";
/// The label of the refusal counter.
const REJECTED: &str = "wgcable_endpoints_rejected_total";

/// A hostile Endpoint: valid YAML and a well-formed key unless the attack is about them.
#[derive(Clone, Debug)]
struct Hostile {
    cluster: String,
    subnets: Vec<String>,
    private_ip: String,
    public_ip: String,
    health_ip: Option<String>,
    /// A well-formed public key nobody holds the private key of.
    key: String,
}

impl Hostile {
    fn new(cluster: &str, subnets: &[&str], private_ip: &str) -> Hostile {
        Hostile {
            cluster: cluster.to_string(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            private_ip: private_ip.to_string(),
            public_ip: String::new(),
            health_ip: None,
            key: key_of(cluster),
        }
    }

    fn yaml(&self) -> String {
        // Every value quoted: `::1` and `::ffff:...` are not plain YAML scalars.
        let dashed = self.private_ip.replace(['.', ':'], "-");
        let mut y = format!(
            "apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  name: {c}-submariner-cable-{c}-{dashed}\n\
             spec:\n  cluster_id: \"{c}\"\n  cable_name: \"submariner-cable-{c}-{dashed}\"\n  hostname: \"gw-{c}\"\n  subnets:\n",
            c = self.cluster
        );
        for s in &self.subnets {
            y.push_str(&format!("  - \"{s}\"\n"));
        }
        y.push_str(&format!(
            "  private_ip: \"{}\"\n  public_ip: \"{}\"\n",
            self.private_ip, self.public_ip
        ));
        if let Some(h) = &self.health_ip {
            y.push_str(&format!("  healthCheckIP: \"{h}\"\n"));
        }
        y.push_str(&format!(
            "  nat_enabled: false\n  backend: wireguard\n  backend_config:\n    publicKey: \"{}\"\n    udp-port: \"4500\"\n",
            self.key
        ));
        y
    }
}

/// A well-formed WireGuard public key for `seed` (32 bytes of SHA-256: the planner needs a
/// valid key, not one anyone holds the secret of).
fn key_of(seed: &str) -> String {
    base64(&Sha256::digest(
        format!("wgcable e2e hostile {seed}").as_bytes(),
    ))
}

/// What to put in the broker directory.
enum Plant {
    /// Written the way gateways write (a hidden temporary file renamed into place).
    File(Vec<u8>),
    /// A symbolic link to this target.
    Link(String),
    Fifo,
}

/// One attack: a file in the broker directory and the reason every gateway must give.
struct Attack {
    file: String,
    what: String,
    plant: Plant,
    reason: &'static str,
    /// (gateway index, reason) where a gateway's reason differs.
    except: Vec<(usize, &'static str)>,
}

impl Attack {
    fn new(file: &str, what: &str, plant: Plant, reason: &'static str) -> Attack {
        Attack {
            file: file.to_string(),
            what: what.to_string(),
            plant,
            reason,
            except: Vec::new(),
        }
    }

    /// Gateway `i` refuses it for another reason.
    fn at(mut self, i: usize, reason: &'static str) -> Attack {
        self.except.push((i, reason));
        self
    }

    fn reason_at(&self, i: usize) -> &'static str {
        self.except
            .iter()
            .find(|(at, _)| *at == i)
            .map_or(self.reason, |(_, r)| r)
    }

    fn endpoint(file: &str, what: &str, ep: &Hostile, reason: &'static str) -> Attack {
        Attack::new(file, what, Plant::File(ep.yaml().into_bytes()), reason)
    }

    fn plant(&self, dir: &Path) -> Result<()> {
        let path = dir.join(&self.file);
        match &self.plant {
            Plant::File(bytes) => write_broker_file(dir, &self.file, bytes),
            Plant::Link(target) => {
                eprintln!("$ ln -s {target} {}", path.display());
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("linking {} to {target}", path.display()))
            }
            Plant::Fifo => {
                eprintln!("$ mkfifo {}", path.display());
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
                    .with_context(|| format!("mkfifo {}", path.display()))
            }
        }
    }
}

/// The static attacks of step 1.
fn attacks(topo: &Topology) -> Vec<Attack> {
    let mut list = Vec::new();
    for c in &topo.clusters {
        list.push(Attack::new(
            &format!("key-{}.yaml", c.id),
            &format!("a link to gateway {}'s private.key", c.id),
            Plant::Link(
                c.state_dir
                    .join("private.key")
                    .to_string_lossy()
                    .into_owned(),
            ),
            "symlink",
        ));
    }
    list.push(Attack::new(
        "zero.yaml",
        "a link to /dev/zero",
        Plant::Link("/dev/zero".into()),
        "symlink",
    ));
    list.push(Attack::new(
        "fifo.yaml",
        "a FIFO",
        Plant::Fifo,
        "not_regular_file",
    ));
    list.push(Attack::new(
        "fifo-link.yaml",
        "a link to the FIFO",
        Plant::Link("fifo.yaml".into()),
        "symlink",
    ));
    let mut big = Hostile::new("big", &["10.251.0.0/16"], "192.168.77.201").yaml();
    big.push_str("# ");
    big.push_str(&"x".repeat(50 * 1000 * 1000));
    big.push('\n');
    list.push(Attack::new(
        "big.yaml",
        "a 50 MB file",
        Plant::File(big.into_bytes()),
        "too_large",
    ));
    let subnets = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("172.{}.{}.0/24", 16 + i / 256, i % 256))
            .collect()
    };
    let mut many = Hostile::new("many", &[], "192.168.77.202");
    many.subnets = subnets(10_000);
    list.push(Attack::endpoint(
        "many.yaml",
        "10,000 subnets",
        &many,
        "too_large",
    ));
    let mut some = Hostile::new("some", &[], "192.168.77.203");
    some.subnets = subnets(300);
    list.push(Attack::endpoint(
        "some.yaml",
        "300 subnets (under the size cap)",
        &some,
        "too_many_subnets",
    ));
    let nested = |depth: usize| format!("{}{}\n", "[".repeat(depth), "]".repeat(depth));
    list.push(Attack::new(
        "deep.yaml",
        "50,000 nested flow lists",
        Plant::File(nested(50_000).into_bytes()),
        "too_large",
    ));
    list.push(Attack::new(
        "deep-small.yaml",
        "16,000 nested flow lists (under the size cap)",
        Plant::File(nested(16_000).into_bytes()),
        "too_deep",
    ));
    let a = &topo.clusters[0];
    let mut impostor = Hostile::new("a", &[&a.subnet, &a.subnet6], "192.168.77.66");
    impostor.key = key_of("impostor-a");
    // At a itself, the subnets are a's own: the policy refuses it before identity is judged.
    list.push(
        Attack::endpoint(
            "0-a.yaml",
            "an impostor 0-a.yaml claiming cluster a",
            &impostor,
            "impostor",
        )
        .at(0, "subnet_overlaps_local"),
    );
    for (file, subnet, what, reason) in [
        (
            "wide.yaml",
            "128.0.0.0/1",
            "subnet 128.0.0.0/1",
            "subnet_special_purpose",
        ),
        (
            "broad.yaml",
            "10.0.0.0/7",
            "subnet 10.0.0.0/7",
            "subnet_too_broad",
        ),
        (
            "underlay.yaml",
            "192.168.77.0/24",
            "the underlay's /24",
            "subnet_covers_underlay",
        ),
        (
            "mcast.yaml",
            "239.1.0.0/16",
            "a multicast subnet",
            "subnet_special_purpose",
        ),
        (
            "linklocal.yaml",
            "169.254.0.0/16",
            "the link-local subnet",
            "subnet_special_purpose",
        ),
        (
            "loopback.yaml",
            "127.0.0.0/8",
            "the loopback subnet",
            "subnet_special_purpose",
        ),
        (
            "mapped.yaml",
            "::ffff:10.0.0.0/104",
            "a v4-mapped IPv6 subnet",
            "subnet_special_purpose",
        ),
    ] {
        let stem = file.trim_end_matches(".yaml");
        let ep = Hostile::new(stem, &[subnet], "192.168.77.210");
        list.push(Attack::endpoint(file, what, &ep, reason));
    }
    for (n, (file, ip, what, reason)) in [
        (
            "ip-loop.yaml",
            "127.0.0.1",
            "endpoint IP 127.0.0.1",
            "address_special_purpose",
        ),
        (
            "ip-loop6.yaml",
            "::1",
            "endpoint IP ::1",
            "address_special_purpose",
        ),
        (
            "ip-bcast.yaml",
            "255.255.255.255",
            "endpoint IP 255.255.255.255",
            "address_special_purpose",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let stem = file.trim_end_matches(".yaml");
        let subnet = format!("10.250.{n}.0/24");
        let ep = Hostile::new(stem, &[&subnet], ip);
        list.push(Attack::endpoint(file, what, &ep, reason));
    }
    // Each gateway's own address in one of the three fields: refused at every gateway.
    let ips: Vec<String> = topo
        .clusters
        .iter()
        .map(|c| c.underlay_ip.to_string())
        .collect();
    let mut own = Hostile::new("ip-own", &["10.250.9.0/24"], &ips[0]);
    own.public_ip = ips.get(1).cloned().unwrap_or_default();
    own.health_ip = ips.get(2).cloned();
    list.push(Attack::endpoint(
        "ip-own.yaml",
        "the gateway's own IP (a's as private, b's as public, c's as health-check IP)",
        &own,
        "address_is_local",
    ));
    list
}

/// Every gateway's peers (key, endpoint, allowed IPs) and table 150 routes of both families:
/// what "the good tunnels are untouched" compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tunnels(Vec<GatewayTunnels>);

/// A peer as compared: public key, endpoint, sorted allowed IPs.
type PeerView = (String, String, Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct GatewayTunnels {
    peers: Vec<PeerView>,
    /// Table 150's destinations, both families, sorted.
    routes: Vec<String>,
}

fn tunnels(topo: &Topology) -> Result<Tunnels> {
    let mut all = Vec::new();
    for i in 0..topo.clusters.len() {
        let mut peers: Vec<PeerView> = state::peers(topo, i)?
            .into_iter()
            .map(|p| {
                let mut allowed = p.allowed_ips;
                allowed.sort();
                (p.public_key, p.endpoint, allowed)
            })
            .collect();
        peers.sort();
        let mut routes = Vec::new();
        for family in Family::ALL {
            routes.extend(state::routes_of(topo, i, family)?);
        }
        routes.sort();
        all.push(GatewayTunnels { peers, routes });
    }
    Ok(Tunnels(all))
}

/// Fails, naming the gateway and the difference, unless every gateway's tunnels are `want`.
fn ensure_untouched(topo: &Topology, want: &Tunnels, after: &str) -> Result<()> {
    let got = tunnels(topo)?;
    for (i, (want, got)) in want.0.iter().zip(&got.0).enumerate() {
        let id = &topo.clusters[i].id;
        let (want_peers, want_routes, peers, routes) =
            (&want.peers, &want.routes, &got.peers, &got.routes);
        // Keys and endpoints only in the message: the allowed IPs are in `wg show`.
        let keys = |p: &[PeerView]| -> Vec<String> {
            p.iter().map(|(k, e, _)| format!("{k}@{e}")).collect()
        };
        ensure!(
            peers == want_peers,
            "after {after}: gateway {id}'s peers changed: {:?} -> {:?}",
            keys(want_peers),
            keys(peers)
        );
        ensure!(
            routes == want_routes,
            "after {after}: gateway {id}'s table {TABLE} routes changed: {want_routes:?} -> {routes:?}"
        );
    }
    Ok(())
}

/// Whether a log line names `file` as its `object=` and gives `reason`.
fn refusal_logged(log: &str, file: &str, reason: &str) -> bool {
    let reason = format!("reason={reason}");
    log.lines().any(|line| {
        line.split_whitespace()
            .any(|word| word.strip_prefix("object=") == Some(file))
            && line.split_whitespace().any(|word| word == reason)
    })
}

/// `wgcable_endpoints_rejected_total` by reason, at gateway `i`.
fn rejections(topo: &Topology, i: usize) -> Result<BTreeMap<String, f64>> {
    Ok(state::metrics(topo, i)?
        .into_iter()
        .filter(|s| s.name == REJECTED)
        .filter_map(|s| Some((s.label("reason")?.to_string(), s.value)))
        .collect())
}

fn metric_sum(topo: &Topology, i: usize, name: &str) -> Result<f64> {
    Ok(state::metrics(topo, i)?
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum())
}

/// Waits until every gateway `i` logged `(file, reason)` for each of `expected[i]` since
/// `offsets[i]` and counted each reason at least as often as it is expected; returns the time
/// it took.
fn wait_refused(
    topo: &Topology,
    offsets: &[u64],
    counted_before: &[BTreeMap<String, f64>],
    expected: &[Vec<(String, &'static str)>],
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    for (i, expected) in expected.iter().enumerate() {
        let id = topo.clusters[i].id.clone();
        poll(
            &format!("gateway {id} to log every refusal"),
            timeout,
            || {
                let log = topo.log_since(i, offsets[i]);
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|(file, reason)| !refusal_logged(&log, file, reason))
                    .map(|(file, reason)| format!("{file} ({reason})"))
                    .collect();
                ensure!(missing.is_empty(), "no log line about {missing:?}");
                Ok(())
            },
        )?;
        let mut want: BTreeMap<&str, f64> = BTreeMap::new();
        for (_, reason) in expected {
            *want.entry(reason).or_default() += 1.0;
        }
        poll(
            &format!("gateway {id} to count every refusal by reason"),
            Duration::from_secs(5),
            || {
                let now = rejections(topo, i)?;
                for (reason, n) in &want {
                    let before = counted_before[i].get(*reason).copied().unwrap_or(0.0);
                    let after = now.get(*reason).copied().unwrap_or(0.0);
                    ensure!(
                        after - before >= *n,
                        "{REJECTED}{{reason=\"{reason}\"}} rose by {} (want {n})",
                        after - before
                    );
                }
                Ok(())
            },
        )?;
    }
    Ok(start.elapsed())
}

/// `ip monitor route` in one gateway namespace, read on a thread of its own.
struct RouteMonitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    ns: String,
    canaries: u32,
}

impl RouteMonitor {
    fn start(topo: &Topology, i: usize) -> Result<RouteMonitor> {
        let mut child = spawn(
            topo.ip(i, ["monitor", "route"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )?;
        let stdout = child.stdout.take().context("ip monitor stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .expect("no panics while holding the lock")
                        .push(line);
                }
            });
        }
        let mut m = RouteMonitor {
            child,
            lines,
            ns: topo.clusters[i].gw_ns.clone(),
            canaries: 0,
        };
        // Only once the monitor reports a change of its own is it known to be listening. It
        // may subscribe between a canary's add and its delete (and print only the delete), so
        // a canary that is not seen whole is followed by another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match m.canary_within(topo, i, Duration::from_secs(1)) {
                Ok(()) => return Ok(m),
                Err(e) if attempt >= 10 => {
                    return Err(e.context(format!("`ip monitor route` in {} never listened", m.ns)))
                }
                Err(_) => continue,
            }
        }
    }

    /// Adds and removes a route in table 151 (which no gateway uses) and waits until the
    /// monitor printed both changes.
    fn canary(&mut self, topo: &Topology, i: usize) -> Result<()> {
        self.canary_within(topo, i, Duration::from_secs(5))
    }

    fn canary_within(&mut self, topo: &Topology, i: usize, timeout: Duration) -> Result<()> {
        self.canaries += 1;
        let dst = format!("10.99.99.{}/32", self.canaries);
        cmd::run(&mut topo.ip(i, ["route", "add", &dst, "dev", "lo", "table", "151"]))?;
        cmd::run(&mut topo.ip(i, ["route", "del", &dst, "dev", "lo", "table", "151"]))?;
        let ip = dst.trim_end_matches("/32").to_string();
        poll(
            &format!("ip monitor in {} to see the canary route {dst}", self.ns),
            timeout,
            || {
                let n = self
                    .lines
                    .lock()
                    .expect("no panics while holding the lock")
                    .iter()
                    .filter(|l| l.contains(&ip) && l.contains("table 151"))
                    .count();
                ensure!(n >= 2, "{n} of 2 canary lines seen");
                Ok(())
            },
        )
    }

    /// The changes of table 150 seen so far.
    fn table_changes(&self) -> Vec<String> {
        let table = format!("table {TABLE}");
        self.lines
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .filter(|l| l.contains(&table))
            .cloned()
            .collect()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites `path` in place `CHURN_RATE` times a second for `CHURN_FOR`, one line per
/// write(2), so a reader can catch any prefix of it; returns the number of rewrites.
fn churn_in_place(path: &Path, content: &str) -> Result<u32> {
    let mut n = 0;
    let start = Instant::now();
    let step = Duration::from_secs(1) / CHURN_RATE;
    while start.elapsed() < CHURN_FOR {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("rewriting {}", path.display()))?;
        for line in content.split_inclusive('\n') {
            f.write_all(line.as_bytes())?;
        }
        drop(f);
        n += 1;
        let next = step * n;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(n)
}

/// Replaces `path` by atomic renames `CHURN_RATE` times a second for `CHURN_FOR`,
/// alternating between `contents`; returns the number of renames and the last index written.
fn churn_atomic(dir: &Path, name: &str, contents: &[String; 2]) -> Result<(u32, usize)> {
    let mut n = 0;
    let start = Instant::now();
    let step = Duration::from_secs(1) / CHURN_RATE;
    let tmp = dir.join(format!(".xtask-churn-{name}"));
    let path = dir.join(name);
    let mut last = 0;
    while start.elapsed() < CHURN_FOR {
        last = n as usize % 2;
        std::fs::write(&tmp, &contents[last])
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", path.display()))?;
        n += 1;
        let next = step * n;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok((n, last))
}

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let attacks = attacks(topo);
    let mut planted: Vec<String> = Vec::new();
    let result = attack_all(topo, &attacks, &mut planted);
    for file in &planted {
        let path = topo.broker_dir.join(file);
        if std::fs::symlink_metadata(&path).is_ok() {
            eprintln!("$ rm {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
    let measured = result?;
    // Every gateway running again, every connection connected, the planted files gone.
    ensure_mesh(topo)?;
    let secrets = check_secrets(topo)?;
    Ok(format!("{measured}; {secrets}"))
}

fn attack_all(
    topo: &mut Topology,
    attacks: &[Attack],
    planted: &mut Vec<String>,
) -> Result<String> {
    let dir = topo.broker_dir.clone();
    let n = topo.clusters.len();
    let good = tunnels(topo)?;
    let mut report = Vec::new();
    let ping = BackgroundPing::start(topo, 0, 2)?;
    ping.wait_more(5, WAIT)?;

    // 1. Everything static at once.
    let offsets: Vec<u64> = (0..n).map(|i| topo.log_len(i)).collect();
    let before: Vec<BTreeMap<String, f64>> =
        (0..n).map(|i| rejections(topo, i)).collect::<Result<_>>()?;
    for a in attacks {
        a.plant(&dir)
            .with_context(|| format!("planting {} ({})", a.file, a.what))?;
        planted.push(a.file.clone());
    }
    let expected: Vec<Vec<(String, &'static str)>> = (0..n)
        .map(|i| {
            attacks
                .iter()
                .map(|a| (a.file.clone(), a.reason_at(i)))
                .collect()
        })
        .collect();
    let took = wait_refused(topo, &offsets, &before, &expected, WAIT)?;
    ensure_untouched(topo, &good, "the static attacks")?;
    report.push(format!(
        "{} attacks ({}) refused with a log line naming the file and the reason, counted by reason, at \
         {n}/{n} gateways within {:.2}s, no peer or route installed, the good tunnels untouched",
        attacks.len(),
        attacks
            .iter()
            .map(|a| a.what.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        secs(took)
    ));

    // 2. Churn.
    report.push(churn(topo, &dir, planted, &good)?);

    // 3. b restarts with the impostor 0-a.yaml still there.
    let b_offset = topo.log_len(1);
    topo.stop_gateway(1)?;
    let restarted = Instant::now();
    topo.start_gateway(1)?;
    state::wait_connected(topo, 1, &topo.remotes(1), WAIT)?;
    let connected = restarted.elapsed();
    let b_ping = wait_ping(topo, 1, 0, WAIT)?;
    poll(
        "gateway b to refuse the impostor after its restart",
        WAIT,
        || {
            ensure!(
                refusal_logged(&topo.log_since(1, b_offset), "0-a.yaml", "impostor"),
                "no log line about 0-a.yaml"
            );
            Ok(())
        },
    )?;
    ensure_untouched(topo, &good, "gateway b's restart with the impostor present")?;
    let a_key = state::public_key(topo, 0)?;
    report.push(format!(
        "gateway b restarted with the impostor 0-a.yaml present: connected again {:.2}s after the start, refused \
         it again, kept a's real key {}... for a's subnets (pod-b -> pod-a answered {:.2}s later)",
        secs(connected),
        &a_key[..8],
        secs(b_ping)
    ));

    // 4. b's own Endpoint overwritten by someone else.
    report.push(own_endpoint(topo, &dir, &good)?);

    let pinged = ping.stop()?;
    ensure!(
        pinged.lost() <= PING_LOSS_BOUND,
        "{}: {} of {} pings lost during the attacks (bound {PING_LOSS_BOUND}), longest silence {:.2}s",
        "pod-a -> pod-c",
        pinged.lost(),
        pinged.sent,
        secs(pinged.longest_gap)
    );
    report.push(format!(
        "pod-a -> pod-c ping at 10/s through steps 1-4: {} sent, {} lost (bound {PING_LOSS_BOUND}), longest silence \
         {:.2}s",
        pinged.sent,
        pinged.lost(),
        secs(pinged.longest_gap)
    ));

    // 5. A squatter at a fresh start.
    for file in planted.drain(..) {
        let _ = std::fs::remove_file(dir.join(&file));
    }
    planted.push("0-zz.yaml".into());
    report.push(squatter(topo, &dir)?);
    Ok(report.join("; "))
}

/// Step 2: a file rewritten in place, then flipped atomically, each CHURN_RATE times a second.
fn churn(
    topo: &mut Topology,
    dir: &Path,
    planted: &mut Vec<String>,
    good: &Tunnels,
) -> Result<String> {
    let n = topo.clusters.len();
    let subnets: Vec<String> = (0..10).map(|i| format!("10.240.{i}.0/24")).collect();
    let subnet_refs: Vec<&str> = subnets.iter().map(String::as_str).collect();
    let first = Hostile::new("churn", &subnet_refs, "192.168.77.60");
    let mut second = first.clone();
    second.private_ip = "192.168.77.61".into();
    let contents = [first.yaml(), second.yaml()];
    planted.push("churn.yaml".into());
    write_broker_file(dir, "churn.yaml", contents[0].as_bytes())?;
    let churn_peer = |topo: &Topology, i: usize, ip: &str| -> Result<()> {
        let peers = state::peers(topo, i)?;
        let p = peers
            .iter()
            .find(|p| p.public_key == first.key)
            .context("no peer for cluster churn yet")?;
        ensure!(
            p.endpoint.starts_with(&format!("{ip}:")),
            "churn's peer has endpoint {}",
            p.endpoint
        );
        ensure!(
            subnets.iter().all(|s| p.allowed_ips.contains(s)),
            "churn's peer allows {:?}",
            p.allowed_ips
        );
        let routes = state::routes(topo, i)?;
        ensure!(
            subnets.iter().all(|s| routes.contains(s)),
            "table {TABLE} lacks some of churn's 10 routes"
        );
        Ok(())
    };
    for i in 0..n {
        poll(
            &format!("gateway {} to admit cluster churn", topo.clusters[i].id),
            WAIT,
            || churn_peer(topo, i, &first.private_ip),
        )?;
    }
    let mut monitors: Vec<RouteMonitor> = (0..n)
        .map(|i| RouteMonitor::start(topo, i))
        .collect::<Result<_>>()?;
    let offsets: Vec<u64> = (0..n).map(|i| topo.log_len(i)).collect();
    let reconciles: Vec<f64> = (0..n)
        .map(|i| metric_sum(topo, i, "wgcable_reconciles_total"))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let in_place = churn_in_place(&dir.join("churn.yaml"), &contents[0])?;
    let (atomic, last) = churn_atomic(dir, "churn.yaml", &contents)?;
    let churned = start.elapsed();
    let last_ip = if last == 0 {
        &first.private_ip
    } else {
        &second.private_ip
    };
    // Once it holds still, the last content is applied (nothing was stuck or lost).
    for i in 0..n {
        poll(
            &format!(
                "gateway {} to apply churn's last state",
                topo.clusters[i].id
            ),
            WAIT,
            || churn_peer(topo, i, last_ip),
        )?;
    }
    let mut changes = Vec::new();
    let mut lines = Vec::new();
    let mut reconciled = Vec::new();
    let window = start.elapsed();
    for (i, m) in monitors.iter_mut().enumerate() {
        m.canary(topo, i)?;
        changes.push(m.table_changes());
        lines.push(topo.log_since(i, offsets[i]).lines().count());
        reconciled.push(metric_sum(topo, i, "wgcable_reconciles_total")? - reconciles[i]);
    }
    drop(monitors);
    let resyncs = (window.as_secs_f64() / RESYNC.as_secs_f64()).ceil();
    for i in 0..n {
        let id = &topo.clusters[i].id;
        ensure!(
            changes[i].is_empty(),
            "gateway {id} changed table {TABLE} routes {} times while a file churned: {:?}",
            changes[i].len(),
            &changes[i][..changes[i].len().min(5)]
        );
        ensure!(
            lines[i] <= CHURN_LOG_BOUND,
            "gateway {id} logged {} lines while a file churned (bound {CHURN_LOG_BOUND})",
            lines[i]
        );
        ensure!(
            reconciled[i] <= resyncs + CHURN_RECONCILE_BOUND,
            "gateway {id} ran {} reconciles while a file churned ({resyncs} resync ticks + bound \
             {CHURN_RECONCILE_BOUND})",
            reconciled[i]
        );
    }
    std::fs::remove_file(dir.join("churn.yaml")).context("removing churn.yaml")?;
    poll("every gateway to drop cluster churn", WAIT, || {
        ensure_untouched(topo, good, "churn.yaml was removed")
    })?;
    Ok(format!(
        "churn.yaml (10 subnets) rewritten in place line by line {in_place} times then flipped between two IPs \
         by {atomic} atomic renames in {:.1}s ({:.0}/s): 0 table {TABLE} route changes at {n}/{n} gateways \
         (ip monitor, canaries seen before and after), reconciles {:?} in {:.1}s ({resyncs} resync ticks), log \
         lines {:?} (bound {CHURN_LOG_BOUND}), the last state applied once it held still",
        secs(churned),
        f64::from(in_place + atomic) / churned.as_secs_f64(),
        reconciled,
        window.as_secs_f64(),
        lines
    ))
}

/// Step 4: someone else overwrites b's own Endpoint.
fn own_endpoint(topo: &Topology, dir: &Path, good: &Tunnels) -> Result<String> {
    let path = dir.join("b.yaml");
    let original = std::fs::read(&path).context("reading b.yaml")?;
    let b = &topo.clusters[1];
    let mut fake = Hostile::new("b", &[&b.subnet, &b.subnet6], "192.168.77.67");
    fake.key = key_of("fake-b");
    let offset = topo.log_len(1);
    write_broker_file(dir, "b.yaml", fake.yaml().as_bytes())?;
    let start = Instant::now();
    let restored = poll("gateway b to write its own Endpoint back", RESCAN, || {
        ensure!(
            std::fs::read(&path)? == original,
            "b.yaml still differs from what b published"
        );
        Ok(start.elapsed())
    })?;
    ensure!(
        topo.log_since(1, offset)
            .contains("differs from what this gateway published"),
        "gateway b rewrote its Endpoint without a warning"
    );
    poll("a and c to follow b's real Endpoint", WAIT, || {
        ensure_untouched(topo, good, "b's Endpoint was overwritten")
    })?;
    Ok(format!(
        "b's own Endpoint overwritten with another key and IP: b wrote its own back {:.2}s later (bound: one rescan, \
         {}s) with a warning; a and c hold b's real key again",
        secs(restored),
        RESCAN.as_secs()
    ))
}

/// Step 5: a squatter claiming b's subnets at a fresh start, with and without registries.
fn squatter(topo: &mut Topology, dir: &Path) -> Result<String> {
    let n = topo.clusters.len();
    let b = &topo.clusters[1];
    let (b_subnet, b_subnet6) = (b.subnet.clone(), b.subnet6.clone());
    let squatter = Hostile::new("0-zz", &[&b_subnet, &b_subnet6], "192.168.77.70");
    let mut rounds = Vec::new();
    for (round, forget) in [(1, true), (2, false)] {
        for i in 0..n {
            topo.stop_gateway(i)?;
        }
        for i in 0..n {
            cmd::run(&mut topo.gw(i, &topo.gateway_bin, ["cleanup"]))?;
            if forget {
                // As at a first start: only the files' creation order can decide.
                let registry = topo.clusters[i].state_dir.join(REGISTRY_FILE);
                if registry.exists() {
                    eprintln!("$ rm {}", registry.display());
                    std::fs::remove_file(&registry)
                        .with_context(|| format!("removing {}", registry.display()))?;
                }
            }
        }
        if round == 1 {
            // Created now: newer than b.yaml, but read first (it sorts before it).
            write_broker_file(dir, "0-zz.yaml", squatter.yaml().as_bytes())?;
        }
        let offsets: Vec<u64> = (0..n).map(|i| topo.log_len(i)).collect();
        let start = Instant::now();
        for i in 0..n {
            topo.start_gateway(i)?;
        }
        wait_mesh(topo, WAIT)?;
        let meshed = start.elapsed();
        let b_key = state::public_key(topo, 1)?;
        for i in [0, 2] {
            let id = topo.clusters[i].id.clone();
            let peers = state::peers(topo, i)?;
            let owner = peers
                .iter()
                .find(|p| p.allowed_ips.contains(&b_subnet))
                .with_context(|| format!("gateway {id} has no peer for {b_subnet}"))?;
            ensure!(
                owner.public_key == b_key,
                "round {round}: gateway {id} gave b's subnet {b_subnet} to the squatter"
            );
            ensure!(
                !peers.iter().any(|p| p.public_key == squatter.key),
                "round {round}: gateway {id} installed the squatter"
            );
            poll(
                &format!("gateway {id} to refuse the squatter"),
                WAIT,
                || {
                    ensure!(
                        refusal_logged(
                            &topo.log_since(i, offsets[i]),
                            "0-zz.yaml",
                            "subnet_conflict"
                        ),
                        "no subnet_conflict line about 0-zz.yaml"
                    );
                    Ok(())
                },
            )?;
        }
        poll("gateway b to refuse the squatter", WAIT, || {
            ensure!(
                refusal_logged(
                    &topo.log_since(1, offsets[1]),
                    "0-zz.yaml",
                    "subnet_overlaps_local"
                ),
                "no subnet_overlaps_local line about 0-zz.yaml"
            );
            Ok(())
        })?;
        wait_ping(topo, 0, 1, WAIT)?;
        rounds.push(format!(
            "{} (mesh up {:.1}s after the start)",
            if forget {
                "registries removed"
            } else {
                "registries kept"
            },
            secs(meshed)
        ));
    }
    std::fs::remove_file(dir.join("0-zz.yaml")).context("removing 0-zz.yaml")?;
    Ok(format!(
        "a squatter 0-zz.yaml claiming b's subnets at a fresh start after `wgcable cleanup` on {n}/{n} gateways, \
         {}: b's older Endpoint held its subnets at a and c (squatter refused subnet_conflict, at b \
         subnet_overlaps_local), pod-a -> pod-b answered",
        rounds.join(", then ")
    ))
}

/// Step 6: no secret in any gateway log.
fn check_secrets(topo: &Topology) -> Result<String> {
    let mut secrets: Vec<(String, String)> = Vec::new();
    for c in &topo.clusters {
        let key = std::fs::read_to_string(c.state_dir.join("private.key"))
            .with_context(|| format!("reading gateway {}'s private key", c.id))?;
        let key = key.trim().to_string();
        ensure!(
            key.len() == 44,
            "gateway {}'s private key is not base64",
            c.id
        );
        secrets.push((format!("gateway {}'s private key", c.id), key));
    }
    secrets.push(("the PSK".into(), PSK.to_string()));
    secrets.push((
        "the WireGuard PSK derived from it".into(),
        base64(&Sha256::digest(PSK.as_bytes())),
    ));
    let mut bytes = 0;
    for (i, c) in topo.clusters.iter().enumerate() {
        let log = topo.log_since(i, 0);
        bytes += log.len();
        for (what, secret) in &secrets {
            if log.contains(secret.as_str()) {
                bail!(
                    "gateway {}'s log ({}) contains {what}",
                    c.id,
                    c.log.display()
                );
            }
        }
    }
    Ok(format!(
        "no private key, PSK or derived PSK in any of {} gateway logs ({} KiB)",
        topo.clusters.len(),
        bytes / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_line_must_name_the_file_as_its_object() {
        let log = " WARN 0-a.yaml: refused: ... object=0-a.yaml reason=impostor\n";
        assert!(refusal_logged(log, "0-a.yaml", "impostor"));
        assert!(!refusal_logged(log, "a.yaml", "impostor"));
        assert!(!refusal_logged(log, "0-a.yaml", "symlink"));
        assert!(!refusal_logged(
            "object=0-a.yaml\nreason=impostor\n",
            "0-a.yaml",
            "impostor"
        ));
    }

    #[test]
    fn hostile_endpoints_quote_every_value() {
        let mut ep = Hostile::new("ip-loop6", &["::ffff:10.0.0.0/104"], "::1");
        ep.health_ip = Some("192.168.77.13".into());
        let y = ep.yaml();
        assert!(y.contains("  - \"::ffff:10.0.0.0/104\"\n"), "{y}");
        assert!(y.contains("  private_ip: \"::1\"\n"), "{y}");
        assert!(y.contains("  healthCheckIP: \"192.168.77.13\"\n"), "{y}");
        assert!(y.contains("cluster_id: \"ip-loop6\"\n"), "{y}");
        assert_eq!(key_of("x").len(), 44);
        assert_ne!(key_of("x"), key_of("y"));
    }
}
