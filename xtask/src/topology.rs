//! The multi-cluster topology of the e2e and demo tasks (and of a later bench task), built
//! from network namespaces on one machine:
//!
//! ```text
//!   <p>ul:      br0 ── ul-a ─┬─ ul-b ── ul-c              (the underlay, 192.168.77.0/24)
//!                            │
//!   <p>gw-a:    eth0 192.168.77.11   pods 10.201.1.1/24, fd00:201:0:1::1/64   (+ `submariner`)
//!                                     │
//!   <p>pod-a:                        eth0 10.201.1.10/24, fd00:201:0:1::10/64,
//!                                         default via 10.201.1.1 and via fd00:201:0:1::1
//! ```
//!
//! Clusters are dual-stack, the underlay is IPv4 only (as most real ones are): cluster X (a,
//! b, c is X = 1, 2, 3) owns 10.20X.0.0/16 and fd00:20X::/48, with health-check IPs
//! 10.20X.0.1 and fd00:20X::1. The pods' /64 is fd00:20X:0:1::/64: inside the /48 (a /48 is
//! the first three groups, so `fd00:20X:1::` would lie outside it). IPv6 addresses are added with `nodad`: duplicate address
//! detection would keep them unusable for a second or two, and nothing here can clash. Every
//! link is created inside our own namespaces (`ip -n NS link add ... peer ... netns NS2`), so
//! the host namespace's links, routes and rules are never touched.
//!
//! Each gateway also gets a private mount namespace with its own tmpfs on /run/wireguard, so
//! the userspace control sockets (all `submariner.sock`) do not collide. A long-lived holder
//! process (`sleep infinity`) keeps that mount namespace alive across gateway restarts, and
//! every gateway-side command runs as `nsenter -t HOLDER -m -n -- CMD`.
//!
//! Invariants: names start with a per-run prefix `wgc<pid>-` (so runs never clash and
//! `--cleanup` can find leftovers); [`Topology`]'s `Drop` kills every process that lives in
//! one of its namespaces (holders, gateways, wireguard-go daemons, stray pings) and deletes
//! the namespaces, on success, error, Ctrl-C and panic alike.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, cmd, output, poll, read, spawn};
use crate::state;

/// The WireGuard device every gateway creates.
pub const DEVICE: &str = "submariner";
/// The pre-shared key string every gateway gets (the well-known default is refused). Not a
/// secret, but the hostile-broker scenario checks that no log ever shows it.
pub const PSK: &str = "wgcable-e2e-not-a-secret";
/// The route table the gateways put remote subnets in.
pub const TABLE: u32 = 150;
/// The gateway's HTTP server (metrics, connections), as seen from inside its namespace.
pub const METRICS_URL: &str = "http://127.0.0.1:32780";
/// Every name this module creates starts with this, then the run id, then `-`.
const PREFIX_ROOT: &str = "wgc";
/// Run directories live in the temp dir under this name plus the run prefix.
const RUN_DIR_ROOT: &str = "wgcable-xtask-";
const CLUSTER_IDS: [&str; 3] = ["a", "b", "c"];

/// An IP family of the clusters' subnets (the underlay is always IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// iproute2's family flag (`ip -4 ...`, `ip -6 ...`).
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// "IPv4" or "IPv6", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One cluster: a gateway namespace (with its holder) and a pod namespace.
#[derive(Debug)]
pub struct Cluster {
    pub id: String,
    pub gw_ns: String,
    pub pod_ns: String,
    /// The `sleep infinity` process whose mount namespace the gateway runs in.
    pub holder_pid: u32,
    pub underlay_ip: Ipv4Addr,
    /// The IPv4 subnet (`10.20X.0.0/16`).
    pub subnet: String,
    pub pod_ip: Ipv4Addr,
    pub health_check_ip: Ipv4Addr,
    /// The IPv6 subnet (`fd00:20X::/48`).
    pub subnet6: String,
    pub pod_ip6: Ipv6Addr,
    pub health_check_ip6: Ipv6Addr,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    gateway: Option<Child>,
}

impl Cluster {
    /// The subnet of `family`.
    pub fn subnet_of(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.subnet,
            Family::V6 => &self.subnet6,
        }
    }

    /// The pod's address of `family`.
    pub fn pod_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.pod_ip.into(),
            Family::V6 => self.pod_ip6.into(),
        }
    }

    /// The gateway's health-check IP of `family` (the source of that family's routes).
    pub fn health_check_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.health_check_ip.into(),
            Family::V6 => self.health_check_ip6.into(),
        }
    }

    /// Both subnets, as the gateway's `--subnets` takes them.
    pub fn subnets(&self) -> Vec<String> {
        vec![self.subnet.clone(), self.subnet6.clone()]
    }
}

/// What to build and how to run the gateways.
#[derive(Debug)]
pub struct Options {
    pub clusters: usize,
    pub gateway_bin: PathBuf,
    /// Extra arguments for every `wgcable gateway` (e.g. short resync intervals for e2e).
    pub gateway_args: Vec<String>,
    /// Leave everything in place at the end (for a look around; `--cleanup` removes it).
    pub keep: bool,
}

#[derive(Debug)]
pub struct Topology {
    pub prefix: String,
    pub run_dir: PathBuf,
    pub broker_dir: PathBuf,
    /// How every gateway reaches its broker: `--broker-dir DIR` (the file broker) unless a
    /// scenario switched the topology to etcd (`--broker etcd --etcd-endpoints ...`).
    pub broker_args: Vec<String>,
    /// The etcd cluster of the etcd scenarios, once started (its namespaces share our prefix;
    /// it is torn down with the topology).
    pub etcd: Option<wgcable_etcd::testing::EtcdCluster>,
    pub clusters: Vec<Cluster>,
    pub gateway_bin: PathBuf,
    gateway_args: Vec<String>,
    /// (cluster index, flag, value): a value of `gateway_args` that differs for one gateway
    /// (see [`Topology::override_flag`]).
    overrides: Vec<(usize, String, String)>,
    keep: bool,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    holders: Vec<Child>,
    /// The holders' mount namespaces (`mnt:[INODE]`), to find processes that live there.
    mount_namespaces: Vec<String>,
    torn_down: bool,
}

impl Topology {
    /// Builds the namespaces, links and holders; the gateways are started separately.
    pub fn build(opts: Options) -> Result<Topology> {
        ensure!(
            (1..=CLUSTER_IDS.len()).contains(&opts.clusters),
            "between 1 and {} clusters",
            CLUSTER_IDS.len()
        );
        let prefix = unique_prefix()?;
        let run_dir =
            std::env::temp_dir().join(format!("{RUN_DIR_ROOT}{}", prefix.trim_end_matches('-')));
        let broker_dir = run_dir.join("broker");
        std::fs::create_dir_all(&broker_dir)
            .with_context(|| format!("creating {}", broker_dir.display()))?;
        eprintln!(
            "xtask: building topology {prefix}* (files in {})",
            run_dir.display()
        );

        // From here on, Drop cleans up whatever part was built.
        let mut topo = Topology {
            prefix,
            run_dir,
            broker_args: vec![
                "--broker-dir".to_string(),
                broker_dir.to_string_lossy().into_owned(),
            ],
            broker_dir,
            etcd: None,
            clusters: Vec::new(),
            gateway_bin: opts.gateway_bin,
            gateway_args: opts.gateway_args,
            overrides: Vec::new(),
            keep: opts.keep,
            namespaces: Vec::new(),
            holders: Vec::new(),
            mount_namespaces: Vec::new(),
            torn_down: false,
        };
        let ul = topo.add_netns("ul")?;
        cmd::run(&mut cmd(
            "ip",
            ["-n", &ul, "link", "add", "br0", "type", "bridge"],
        ))?;
        cmd::run(&mut cmd("ip", ["-n", &ul, "link", "set", "br0", "up"]))?;
        for (i, id) in CLUSTER_IDS.iter().take(opts.clusters).enumerate() {
            let cluster = topo.add_cluster(&ul, i, id)?;
            topo.clusters.push(cluster);
        }
        Ok(topo)
    }

    fn add_netns(&mut self, suffix: &str) -> Result<String> {
        let name = format!("{}{suffix}", self.prefix);
        cmd::run(&mut cmd("ip", ["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        cmd::run(&mut cmd("ip", ["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(name)
    }

    fn add_cluster(&mut self, ul: &str, i: usize, id: &str) -> Result<Cluster> {
        let n = i + 1;
        let gw = self.add_netns(&format!("gw-{id}"))?;
        let pod = self.add_netns(&format!("pod-{id}"))?;
        let underlay_ip = Ipv4Addr::new(192, 168, 77, 10 + n as u8);
        let octet = 200 + n as u8;
        let gw_pod_ip = Ipv4Addr::new(10, octet, 1, 1);
        let pod_ip = Ipv4Addr::new(10, octet, 1, 10);
        let v6 = Ipv6Plan::of(n);
        let (gw_pod_ip6, pod_ip6) = (v6.gw_pod_ip, v6.pod_ip);
        let ip = |args: &[&str]| cmd::run(&mut cmd("ip", args));

        // Underlay: a veth from the bridge namespace straight into the gateway namespace.
        let ul_link = format!("ul-{id}");
        ip(&[
            "-n", ul, "link", "add", &ul_link, "type", "veth", "peer", "name", "eth0", "netns", &gw,
        ])?;
        ip(&["-n", ul, "link", "set", &ul_link, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &gw, "link", "set", "eth0", "up"])?;

        // The pod behind its gateway.
        ip(&[
            "-n", &gw, "link", "add", "pods", "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{gw_pod_ip}/24"),
            "dev",
            "pods",
        ])?;
        ip(&[
            "-n",
            &gw,
            "-6",
            "addr",
            "add",
            &format!("{gw_pod_ip6}/64"),
            "dev",
            "pods",
            "nodad",
        ])?;
        ip(&["-n", &gw, "link", "set", "pods", "up"])?;
        ip(&[
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &pod,
            "-6",
            "addr",
            "add",
            &format!("{pod_ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &pod, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &pod,
            "route",
            "add",
            "default",
            "via",
            &gw_pod_ip.to_string(),
        ])?;
        ip(&[
            "-n",
            &pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw_pod_ip6.to_string(),
        ])?;
        cmd::run(&mut cmd(
            "ip",
            [
                "netns",
                "exec",
                &gw,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        ))?;

        // The holder: a private mount namespace with its own /run/wireguard.
        let holder = spawn(
            cmd(
                "ip",
                [
                    "netns",
                    "exec",
                    &gw,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mkdir -p /run/wireguard && mount -t tmpfs -o mode=0755 tmpfs /run/wireguard && exec sleep infinity",
                ],
            )
            .stdin(Stdio::null()),
        )?;
        let holder_pid = holder.id();
        self.holders.push(holder);
        // `ip netns exec`, `unshare` and `sh -c 'exec'` all exec in place, so the pid is the
        // sleep's once the mount is done: wait for that, not for a fixed time.
        let my_mnt =
            std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
        let mnt = poll(
            &format!("the holder of {gw} to mount /run/wireguard"),
            Duration::from_secs(10),
            || {
                let comm = std::fs::read_to_string(format!("/proc/{holder_pid}/comm"))?;
                let mnt = std::fs::read_link(format!("/proc/{holder_pid}/ns/mnt"))?;
                ensure!(
                    comm.trim() == "sleep" && mnt != my_mnt,
                    "holder {holder_pid} is still {}",
                    comm.trim()
                );
                Ok(mnt.to_string_lossy().into_owned())
            },
        )?;
        self.mount_namespaces.push(mnt);

        Ok(Cluster {
            id: id.to_string(),
            gw_ns: gw,
            pod_ns: pod,
            holder_pid,
            underlay_ip,
            subnet: format!("10.{octet}.0.0/16"),
            pod_ip,
            health_check_ip: Ipv4Addr::new(10, octet, 0, 1),
            subnet6: format!("{}/{}", v6.subnet, v6.prefix_len),
            pod_ip6,
            health_check_ip6: v6.health_check_ip,
            state_dir: self.run_dir.join(format!("state-{id}")),
            log: self.run_dir.join(format!("gw-{id}.log")),
            gateway: None,
        })
    }

    /// The value of `flag` among the arguments every gateway gets (e.g. `--backend`).
    pub fn gateway_flag(&self, flag: &str) -> Option<&str> {
        self.gateway_args
            .iter()
            .position(|a| a == flag)
            .and_then(|at| self.gateway_args.get(at + 1))
            .map(String::as_str)
    }

    /// `nsenter -t HOLDER -m -n -- program args`: a command in cluster `i`'s gateway.
    pub fn gw<I, S>(&self, i: usize, program: impl AsRef<std::ffi::OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd(
            "nsenter",
            [
                "-t",
                &self.clusters[i].holder_pid.to_string(),
                "-m",
                "-n",
                "--",
            ],
        );
        c.arg(program).args(args);
        c
    }

    /// `ip netns exec POD program args`: a command in cluster `i`'s pod.
    pub fn pod<I, S>(&self, i: usize, program: impl AsRef<std::ffi::OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd("ip", ["netns", "exec", &self.clusters[i].pod_ns]);
        c.arg(program).args(args);
        c
    }

    /// `ip -n GW args`: iproute2 in cluster `i`'s gateway namespace.
    pub fn ip<I, S>(&self, i: usize, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd("ip", ["-n", &self.clusters[i].gw_ns]);
        c.args(args);
        c
    }

    /// The cluster ids other than cluster `i`'s.
    pub fn remotes(&self, i: usize) -> Vec<&str> {
        self.clusters
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| c.id.as_str())
            .collect()
    }

    /// The arguments gateway `i` runs with, for `subcommand` (`gateway`, or `plan` and `leave`,
    /// which take the same flags).
    pub fn gateway_command(&self, i: usize, subcommand: &str) -> Vec<String> {
        let c = &self.clusters[i];
        let mut args: Vec<String> = [
            subcommand,
            "--cluster-id",
            &c.id,
            "--subnets",
            &c.subnets().join(","),
            "--private-ip",
            &c.underlay_ip.to_string(),
            "--hostname",
            &format!("gw-{}", c.id),
            "--health-check-ip",
            &format!("{},{}", c.health_check_ip, c.health_check_ip6),
            "--state-dir",
            &c.state_dir.to_string_lossy(),
            // A PSK of their own: the well-known default is refused.
            "--psk",
            PSK,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.broker_args.iter().cloned());
        let mut extra = self.gateway_args.iter();
        while let Some(arg) = extra.next() {
            args.push(arg.clone());
            let over = self
                .overrides
                .iter()
                .find(|(at, flag, _)| *at == i && flag == arg);
            if let Some((_, _, value)) = over {
                extra.next();
                args.push(value.clone());
            }
        }
        args
    }

    /// From the next start on, gateway `i` runs with `value` for `flag` instead of the value
    /// every gateway gets (`flag` must be one of the extra arguments, e.g. `--resync-interval`:
    /// the gateway refuses a flag given twice). [`Topology::clear_overrides`] undoes it.
    pub fn override_flag(&mut self, i: usize, flag: &str, value: &str) -> Result<()> {
        ensure!(
            self.gateway_args.iter().any(|a| a == flag),
            "{flag} is not among the gateways' extra arguments {:?}",
            self.gateway_args
        );
        self.overrides.retain(|(at, f, _)| !(*at == i && f == flag));
        self.overrides
            .push((i, flag.to_string(), value.to_string()));
        Ok(())
    }

    pub fn clear_overrides(&mut self, i: usize) {
        self.overrides.retain(|(at, _, _)| *at != i);
    }

    /// Starts `wgcable gateway` for cluster `i` in its holder; output is appended to its log.
    pub fn start_gateway(&mut self, i: usize) -> Result<()> {
        ensure!(
            !self.gateway_running(i),
            "gateway {} is already running",
            self.clusters[i].id
        );
        let c = &self.clusters[i];
        std::fs::create_dir_all(&c.state_dir)
            .with_context(|| format!("creating {}", c.state_dir.display()))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .with_context(|| format!("opening {}", c.log.display()))?;
        writeln!(
            log,
            "==== xtask: starting gateway {} (state dir {}) ====",
            c.id,
            c.state_dir.display()
        )?;
        let args = self.gateway_command(i, "gateway");
        let mut command = self.gw(i, &self.gateway_bin, &args);
        // The log is a file, read by people and searched by the scenarios: no colours.
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn(&mut command)?;
        self.clusters[i].gateway = Some(child);
        Ok(())
    }

    /// True while cluster `i`'s gateway process runs.
    pub fn gateway_running(&mut self, i: usize) -> bool {
        match &mut self.clusters[i].gateway {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Freezes cluster `i`'s gateway (SIGSTOP) until the returned guard is dropped (SIGCONT),
    /// so that a scenario can look at the host without the gateway's resync racing it.
    pub fn pause_gateway(&self, i: usize) -> Result<PausedGateway> {
        let c = &self.clusters[i];
        let child = c
            .gateway
            .as_ref()
            .with_context(|| format!("gateway {} is not running", c.id))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        eprintln!("$ kill -STOP {pid}   # gateway {}", c.id);
        kill(pid, Signal::SIGSTOP).with_context(|| format!("stopping gateway {}", c.id))?;
        Ok(PausedGateway {
            pid,
            id: c.id.clone(),
        })
    }

    /// SIGTERM to cluster `i`'s gateway, then waits for it to exit; returns how long it took.
    pub fn stop_gateway(&mut self, i: usize) -> Result<Duration> {
        let id = self.clusters[i].id.clone();
        let Some(mut child) = self.clusters[i].gateway.take() else {
            bail!("gateway {id} is not running");
        };
        let start = Instant::now();
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        eprintln!("$ kill -TERM {pid}   # gateway {id}");
        // It may have exited already; wait() below tells.
        let _ = kill(pid, Signal::SIGTERM);
        let status = poll(
            &format!("gateway {id} to exit after SIGTERM"),
            Duration::from_secs(15),
            || child.try_wait()?.context("still running"),
        );
        match status {
            Ok(status) => {
                // SIGTERM is the normal way to stop it: 0 or "killed by SIGTERM" are both fine.
                eprintln!(
                    "xtask: gateway {id} exited ({status}) after {:.2?}",
                    start.elapsed()
                );
                Ok(start.elapsed())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The last `n` lines of cluster `i`'s gateway log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = self.log_since(i, 0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The size of cluster `i`'s gateway log, to read only what is logged after a point.
    pub fn log_len(&self, i: usize) -> u64 {
        std::fs::metadata(&self.clusters[i].log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// What cluster `i`'s gateway logged after `offset`.
    pub fn log_since(&self, i: usize, offset: u64) -> String {
        let text = std::fs::read(&self.clusters[i].log).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        strip_ansi(&String::from_utf8_lossy(&text[start..]))
    }

    /// Prints the tail of every gateway log (after a failure).
    pub fn print_log_tails(&self, n: usize) {
        for (i, c) in self.clusters.iter().enumerate() {
            println!(
                "---- last {n} lines of gateway {} log ({}) ----",
                c.id,
                c.log.display()
            );
            println!("{}", self.log_tail(i, n));
        }
        println!("----");
    }

    /// Kills every process in our namespaces and deletes them. Idempotent; errors are printed,
    /// not returned, because it also runs from `Drop`.
    pub fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        if self.keep {
            println!(
                "xtask: --keep: leaving namespaces {}* and {} in place",
                self.prefix,
                self.run_dir.display()
            );
            println!("xtask: remove them with `cargo xtask e2e --cleanup`");
            return;
        }
        eprintln!("xtask: tearing down {}*", self.prefix);
        for c in &mut self.clusters {
            if let Some(mut child) = c.gateway.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let mut pids = Vec::new();
        for ns in &self.namespaces {
            pids.extend(state::processes_in_netns(ns));
        }
        for mnt in &self.mount_namespaces {
            pids.extend(state::processes_in_mntns(mnt));
        }
        kill_all(&pids);
        for holder in &mut self.holders {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        // Its own Drop stops the members and deletes its namespaces (and the veths into ours).
        drop(self.etcd.take());
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = output(&mut cmd("ip", ["netns", "del", ns])) {
                eprintln!("xtask: warning: deleting netns {ns}: {e:#}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            eprintln!("xtask: warning: removing {}: {e}", self.run_dir.display());
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The IPv6 addresses of cluster number `n` (1, 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv6Plan {
    subnet: Ipv6Addr,
    prefix_len: u8,
    health_check_ip: Ipv6Addr,
    gw_pod_ip: Ipv6Addr,
    pod_ip: Ipv6Addr,
}

impl Ipv6Plan {
    fn of(n: usize) -> Ipv6Plan {
        // fd00:20X:: mirrors 10.20X. (0x201 prints as "201"); the pods' /64 is the /48's
        // subnet 1, as 10.20X.1.0/24 is the /16's.
        let segment = 0x200 + u16::try_from(n).expect("at most 3 clusters");
        Ipv6Plan {
            subnet: Ipv6Addr::new(0xfd00, segment, 0, 0, 0, 0, 0, 0),
            prefix_len: 48,
            health_check_ip: Ipv6Addr::new(0xfd00, segment, 0, 0, 0, 0, 0, 1),
            gw_pod_ip: Ipv6Addr::new(0xfd00, segment, 0, 1, 0, 0, 0, 1),
            pod_ip: Ipv6Addr::new(0xfd00, segment, 0, 1, 0, 0, 0, 0x10),
        }
    }
}

/// A gateway frozen by `Topology::pause_gateway`; dropping it lets the gateway run again
/// (also when the scenario fails half-way).
#[derive(Debug)]
pub struct PausedGateway {
    pid: Pid,
    id: String,
}

impl Drop for PausedGateway {
    fn drop(&mut self) {
        eprintln!("$ kill -CONT {}   # gateway {}", self.pid, self.id);
        let _ = kill(self.pid, Signal::SIGCONT);
    }
}

/// SIGKILLs `pids` and waits (briefly) until they are gone.
fn kill_all(pids: &[(i32, String)]) {
    for (pid, comm) in pids {
        eprintln!("$ kill -KILL {pid}   # {comm}");
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let gone = |pid: i32| {
        // A zombie is gone for our purposes: it holds no namespace any more.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pids.iter().all(|(pid, _)| gone(*pid)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes ANSI escape sequences (colours a logger may add even when writing to a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// True for names this module creates: `wgc<run id>-<rest>`.
pub fn is_ours(name: &str) -> bool {
    name.strip_prefix(PREFIX_ROOT)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(run, rest)| {
            !run.is_empty() && run.chars().all(|c| c.is_ascii_alphanumeric()) && !rest.is_empty()
        })
}

/// The names in `ip netns list` output.
fn netns_names(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `wgc<pid>-`, with a letter appended if a leftover already uses it.
fn unique_prefix() -> Result<String> {
    let existing = netns_names(&read(&mut cmd("ip", ["netns", "list"]))?);
    let pid = std::process::id();
    std::iter::once(String::new())
        .chain(('b'..='z').map(String::from))
        .map(|suffix| format!("{PREFIX_ROOT}{pid}{suffix}-"))
        .find(|p| !existing.iter().any(|n| n.starts_with(p.as_str())))
        .context("no free namespace prefix; run `cargo xtask e2e --cleanup`")
}

/// Removes the leftovers of crashed runs: processes in our namespaces, the namespaces, the
/// run directories. It would also remove a run that is still going: do not run it alongside.
pub fn cleanup_leftovers() -> Result<()> {
    let ours: Vec<String> = netns_names(&read(&mut cmd("ip", ["netns", "list"]))?)
        .into_iter()
        .filter(|n| is_ours(n))
        .collect();
    let mut pids = Vec::new();
    for ns in &ours {
        pids.extend(state::processes_in_netns(ns));
    }
    kill_all(&pids);
    for ns in &ours {
        cmd::run(&mut cmd("ip", ["netns", "del", ns]))?;
    }
    let mut dirs = 0;
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(RUN_DIR_ROOT)
                .is_some_and(|rest| is_ours(&format!("{rest}-x")))
            {
                eprintln!("$ rm -rf {}", e.path().display());
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                dirs += 1;
            }
        }
    }
    println!(
        "cleanup: removed {} namespaces, {} processes, {dirs} run directories",
        ours.len(),
        pids.len()
    );
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The running xtask binary, which the namespaces run for `xtask internal ...`.
pub fn xtask_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the xtask binary")
}

/// The cargo that runs us (`cargo xtask` sets CARGO), else the one on PATH.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Builds the gateway binary and returns its path. A debug build: its dependencies are the
/// ones `cargo test` already built, so CI compiles one crate more, not a release tree.
/// `XTASK_WGCABLE=/path/to/wgcable` skips the build and runs that binary instead (a release
/// build, or an older one to compare with).
pub fn build_gateway() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("XTASK_WGCABLE") {
        let bin = PathBuf::from(bin);
        ensure!(
            bin.is_file(),
            "XTASK_WGCABLE={} is not a file",
            bin.display()
        );
        eprintln!(
            "xtask: using the gateway binary {} (XTASK_WGCABLE)",
            bin.display()
        );
        return Ok(bin);
    }
    let mut c = cargo();
    c.args(["build", "--package", "wgcable", "--bin", "wgcable"]);
    cmd::run(&mut c)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("wgcable");
    ensure!(
        bin.is_file(),
        "cargo built wgcable but {} is not there",
        bin.display()
    );
    Ok(bin)
}

/// Whether this kernel can create WireGuard links (else the gateway needs wireguard-go).
pub fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
        || output(&mut cmd("modprobe", ["--dry-run", "--quiet", "wireguard"]))
            .is_ok_and(|o| o.status.success())
}

/// Fails, naming what to install, unless everything the topology needs is there.
pub fn check_prerequisites() -> Result<()> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push(
            "run as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_string(),
        );
    }
    let mut wireguard_go = false;
    let mut packages = Vec::new();
    for (program, package) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("ping", "iputils-ping"),
        ("wg", "wireguard-tools"),
        ("wireguard-go", "wireguard-go"),
    ] {
        if program == "wireguard-go" {
            if kernel_has_wireguard() {
                continue;
            }
            wireguard_go = true;
        }
        if !cmd::exists(program) {
            if !packages.contains(&package) {
                packages.push(package);
            }
            problems.push(format!("`{program}` not found (package {package})"));
        }
    }
    if !Path::new("/proc/sys/net/ipv6").exists() {
        problems.push(
            "the kernel has IPv6 disabled (boot without ipv6.disable=1): the clusters are dual-stack"
                .to_string(),
        );
    }
    if !packages.is_empty() {
        problems.push(format!(
            "install with: apt-get install -y {}",
            packages.join(" ")
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    if wireguard_go {
        problems
            .push("(this kernel has no WireGuard module, so the gateways use wireguard-go)".into());
    }
    bail!("missing prerequisites:\n  {}", problems.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_ours() {
        for name in ["wgc123-ul", "wgc123-gw-a", "wgc4194304b-pod-c"] {
            assert!(is_ours(name), "{name}");
        }
        for name in [
            "wgc-ul", "wgc123", "wgc123-", "ns1", "wgcable", "wgc 1-x", "xwgc1-ul",
        ] {
            assert!(!is_ours(name), "{name}");
        }
    }

    #[test]
    fn ansi_colours_are_stripped_from_logs() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m refused \u{1b}[3mcluster\u{1b}[0m\u{1b}[2m=\u{1b}[0mevil";
        assert_eq!(strip_ansi(line), "2026  WARN refused cluster=evil");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    /// Whether `addr` lies in the plan's subnet.
    fn contains(plan: &Ipv6Plan, addr: Ipv6Addr) -> bool {
        let mask = u128::MAX << (128 - u32::from(plan.prefix_len));
        u128::from(addr) & mask == u128::from(plan.subnet) & mask
    }

    #[test]
    fn ipv6_plan_keeps_every_address_inside_its_clusters_subnet() {
        let plans: Vec<Ipv6Plan> = (1..=CLUSTER_IDS.len()).map(Ipv6Plan::of).collect();
        assert_eq!(plans[0].subnet.to_string(), "fd00:201::");
        assert_eq!(plans[2].health_check_ip.to_string(), "fd00:203::1");
        assert_eq!(plans[1].pod_ip.to_string(), "fd00:202:0:1::10");
        for (i, p) in plans.iter().enumerate() {
            // The gateway routes and allows only its subnet: a pod outside it is unreachable.
            for addr in [p.health_check_ip, p.gw_pod_ip, p.pod_ip] {
                assert!(
                    contains(p, addr),
                    "{addr} outside {}/{}",
                    p.subnet,
                    p.prefix_len
                );
            }
            for (j, other) in plans.iter().enumerate().filter(|(j, _)| *j != i) {
                assert!(!contains(other, p.pod_ip), "pod {i} inside cluster {j}");
            }
        }
        // A /48 is the first three groups: fd00:201:1:: is not in fd00:201::/48.
        assert!(!contains(
            &plans[0],
            "fd00:201:1::10".parse().expect("addr")
        ));
    }

    #[test]
    fn an_override_replaces_one_gateways_flag_value_only() {
        let cluster = |i: usize, id: &str| Cluster {
            id: id.into(),
            gw_ns: format!("wgc1-gw-{id}"),
            pod_ns: format!("wgc1-pod-{id}"),
            holder_pid: 1,
            underlay_ip: Ipv4Addr::new(192, 168, 77, 11 + i as u8),
            subnet: format!("10.20{}.0.0/16", i + 1),
            pod_ip: Ipv4Addr::new(10, 201, 1, 10),
            health_check_ip: Ipv4Addr::new(10, 201, 0, 1),
            subnet6: "fd00:201::/48".into(),
            pod_ip6: Ipv6Addr::LOCALHOST,
            health_check_ip6: Ipv6Addr::LOCALHOST,
            state_dir: PathBuf::from("/nonexistent/state"),
            log: PathBuf::from("/nonexistent/log"),
            gateway: None,
        };
        let mut topo = Topology {
            prefix: "wgc1-".into(),
            run_dir: PathBuf::from("/nonexistent"),
            broker_dir: PathBuf::from("/nonexistent/broker"),
            broker_args: ["--broker-dir", "/nonexistent/broker"]
                .map(String::from)
                .to_vec(),
            etcd: None,
            clusters: vec![cluster(0, "a"), cluster(1, "b")],
            gateway_bin: PathBuf::from("/bin/false"),
            gateway_args: ["--resync-interval", "2s", "-v"].map(String::from).to_vec(),
            overrides: Vec::new(),
            keep: false,
            namespaces: Vec::new(),
            holders: Vec::new(),
            mount_namespaces: Vec::new(),
            // Nothing was built: Drop must not tear anything down.
            torn_down: true,
        };
        let tail = |t: &Topology, i: usize| {
            let args = t.gateway_command(i, "gateway");
            args[args.len() - 3..].to_vec()
        };
        assert_eq!(tail(&topo, 0), ["--resync-interval", "2s", "-v"]);
        topo.override_flag(0, "--resync-interval", "600s")
            .expect("a flag of gateway_args");
        assert_eq!(tail(&topo, 0), ["--resync-interval", "600s", "-v"]);
        assert_eq!(tail(&topo, 1), ["--resync-interval", "2s", "-v"]);
        assert!(topo.override_flag(0, "--table", "9").is_err());
        topo.clear_overrides(0);
        assert_eq!(tail(&topo, 0), ["--resync-interval", "2s", "-v"]);
    }

    #[test]
    fn netns_list_lines_give_names() {
        let list = "wgc1-pod-a (id: 3)\nwgc1-gw-a (id: 2)\nother\n";
        assert_eq!(netns_names(list), ["wgc1-pod-a", "wgc1-gw-a", "other"]);
    }
}
