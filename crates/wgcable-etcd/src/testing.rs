//! A real etcd cluster for tests (feature `testing`): this crate's privileged tests and
//! xtask's e2e scenarios and benchmarks use the same harness.
//!
//! ```text
//!   <p>hub:   br0 10.250.0.254/24 (etcdctl runs here) ── m1 ── m2 ── m3 ── c1 ...
//!   <p>m1:    eth0 10.250.0.1   etcd --name m1, data in <tmp>/m1      (m2, m3 alike)
//!   <p>c1:    eth0 10.250.0.101 a client namespace (or any namespace attached with `attach`)
//! ```
//!
//! Every member runs in a network namespace of its own on a bridge the harness creates (in a
//! namespace of its own too: the host's namespace is never touched). Data and logs live in a
//! temporary directory. [`EtcdCluster`]'s `Drop` kills every process in its namespaces,
//! deletes the namespaces (which removes every veth, also those attached to other
//! namespaces) and the directory, on success, failure and panic alike; on a panic it first
//! prints the tail of each member's log.
//!
//! It shells out to `ip` and `etcdctl` on purpose: this is test scaffolding, and the commands
//! it prints can be replayed by hand.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Every namespace name starts with this (e.g. xtask's run prefix plus `etcd-`).
    pub prefix: String,
    pub members: usize,
    /// The first three octets of the etcd network: members get `.1`..`.n`, the hub `.254`,
    /// attached namespaces `.101` on.
    pub net: [u8; 3],
    /// Extra `etcd` flags for every member (e.g. `--max-request-bytes`).
    pub extra_args: Vec<String>,
    /// Serve clients over TLS and require client certificates (a CA, server and client
    /// certificates are made with `openssl`; see [`EtcdCluster::tls`]).
    pub tls: bool,
}

impl ClusterOptions {
    /// Three members with a unique prefix for this process (`wgce<pid>-<n>-`).
    pub fn new() -> ClusterOptions {
        static N: AtomicU32 = AtomicU32::new(0);
        ClusterOptions {
            prefix: format!(
                "wgce{}-{}-",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            members: 3,
            net: [10, 250, 0],
            extra_args: Vec::new(),
            tls: false,
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One etcd member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    scheme: &'static str,
    child: Option<Child>,
}

/// The TLS files of a cluster started with `tls`: pass them as `--etcd-cacert`,
/// `--etcd-cert`, `--etcd-key`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Member {
    /// `http://IP:2379` (`https://` with TLS).
    pub fn client_url(&self) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme, self.ip)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A running etcd cluster (see the module docs).
#[derive(Debug)]
pub struct EtcdCluster {
    opts: ClusterOptions,
    pub hub: String,
    pub members: Vec<Member>,
    /// Namespaces the harness created (hub, members, clients), in creation order.
    namespaces: Vec<String>,
    /// Namespaces attached with [`EtcdCluster::attach`] (not ours: only their link is).
    attached: u8,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

/// True when this process may build namespaces and `etcd` is installed. Otherwise prints one
/// `skipped: <test>: <why>` line and returns false, except when `CI` is set: there it panics,
/// so a missing privilege or package fails the run instead of hiding it.
pub fn can_run(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root (network namespaces)".to_string())
    } else {
        ["etcd", "etcdctl", "ip"]
            .into_iter()
            .find(|p| !on_path(p))
            .map(|p| {
                format!("`{p}` is not installed (apt-get install etcd-server etcd-client iproute2)")
            })
    };
    match why {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Some(why) => {
            println!("skipped: {test}: {why}");
            false
        }
    }
}

impl EtcdCluster {
    /// Builds the namespaces, starts every member and waits until the cluster has a leader.
    pub fn start(opts: ClusterOptions) -> Result<EtcdCluster> {
        ensure!(
            (1..=9).contains(&opts.members),
            "between 1 and 9 etcd members"
        );
        let dir = tempfile::Builder::new()
            .prefix("wgcable-etcd-")
            .tempdir()
            .context("creating the etcd harness's temporary directory")?;
        let hub = format!("{}hub", opts.prefix);
        let mut cluster = EtcdCluster {
            opts,
            hub: hub.clone(),
            members: Vec::new(),
            namespaces: Vec::new(),
            attached: 0,
            tls: None,
            dir,
        };
        // From here on, Drop removes whatever part was built.
        cluster.add_netns(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        let hub_ip = cluster.addr(254);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{hub_ip}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        if cluster.opts.tls {
            let ips: Vec<Ipv4Addr> = (0..cluster.opts.members)
                .map(|i| cluster.addr(i as u8 + 1))
                .collect();
            cluster.tls = Some(make_certificates(cluster.dir.path(), &ips)?);
        }
        let scheme = if cluster.opts.tls { "https" } else { "http" };
        for i in 0..cluster.opts.members {
            let name = format!("m{}", i + 1);
            let netns = format!("{}{name}", cluster.opts.prefix);
            cluster.add_netns(&netns)?;
            let ip_addr = cluster.addr(i as u8 + 1);
            cluster.link(&netns, &name, "eth0", ip_addr)?;
            let data_dir = cluster.dir.path().join(&name);
            let log = cluster.dir.path().join(format!("{name}.log"));
            cluster.members.push(Member {
                name,
                netns,
                ip: ip_addr,
                data_dir,
                log,
                scheme,
                child: None,
            });
        }
        for i in 0..cluster.members.len() {
            cluster.start_member(i)?;
        }
        cluster.wait_for_leader(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.opts.net;
        Ipv4Addr::new(a, b, c, host)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A veth from the hub's bridge (`hub_side`) into `netns` (`inner`, with `addr`/24).
    fn link(&self, netns: &str, hub_side: &str, inner: &str, addr: Ipv4Addr) -> Result<()> {
        let hub = &self.hub;
        ip(&[
            "-n", hub, "link", "add", hub_side, "type", "veth", "peer", "name", inner, "netns",
            netns,
        ])?;
        ip(&["-n", hub, "link", "set", hub_side, "master", "br0", "up"])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            inner,
        ])?;
        ip(&["-n", netns, "link", "set", inner, "up"])
    }

    /// The members' client URLs, as `--etcd-endpoints` takes them.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client's TLS files, when started with `tls`.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The harness's temporary directory (data and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new namespace of ours on the etcd network; returns its name and address. Its link is
    /// `eth0`.
    pub fn add_client(&mut self, name: &str) -> Result<(String, Ipv4Addr)> {
        let netns = format!("{}{name}", self.opts.prefix);
        self.add_netns(&netns)?;
        let addr = self.attach(&netns, "eth0")?;
        Ok((netns, addr))
    }

    /// Connects an existing namespace (a gateway's, in the e2e) to the etcd network through a
    /// veth named `link` inside it; returns the address it got. The veth goes away with the
    /// hub namespace.
    pub fn attach(&mut self, netns: &str, link: &str) -> Result<Ipv4Addr> {
        ensure!(self.attached < 100, "at most 100 attached namespaces");
        self.attached += 1;
        let addr = self.addr(100 + self.attached);
        let hub_side = format!("c{}", self.attached);
        self.link(netns, &hub_side, link, addr)?;
        Ok(addr)
    }

    /// Brings `link` in `netns` down or up (cutting or restoring its path to etcd).
    pub fn set_link(&self, netns: &str, link: &str, up: bool) -> Result<()> {
        ip(&[
            "-n",
            netns,
            "link",
            "set",
            link,
            if up { "up" } else { "down" },
        ])
    }

    /// Starts (or restarts, on its data) member `i`.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip))
            .collect();
        let token = self.opts.prefix.clone();
        let extra = self.opts.extra_args.clone();
        let tls_args: Vec<String> = match &self.tls {
            None => vec![],
            Some(_) => {
                let dir = self.dir.path();
                vec![
                    format!("--cert-file={}", dir.join("server.pem").display()),
                    format!("--key-file={}", dir.join("server.key").display()),
                    format!("--trusted-ca-file={}", dir.join("ca.pem").display()),
                    "--client-cert-auth".into(),
                ]
            }
        };
        let m = &mut self.members[i];
        ensure!(
            m.child.is_none(),
            "etcd member {} is already running",
            m.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("opening {}", m.log.display()))?;
        let state = if m.data_dir.exists() {
            "existing"
        } else {
            "new"
        };
        let url = m.client_url();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &m.netns, "etcd"])
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls=http://{}:{PEER_PORT}", m.ip))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{}:{PEER_PORT}",
                m.ip
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-token={token}"))
            .arg(format!("--initial-cluster-state={state}"))
            .args(["--logger=zap", "--log-outputs=stderr"])
            // etcd 3.5's default, and what production runs: without it a member that comes
            // back from a partition with a higher term deposes the leader, so a write right
            // after the quorum returns can time out during the extra election.
            .arg("--pre-vote=true")
            .args(&tls_args)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log);
        eprintln!("$ {}", show(&c));
        // `ip netns exec` execs in place: the child's pid is etcd's.
        let child = c
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        m.child = Some(child);
        Ok(())
    }

    /// Sends `signal` to member `i` and waits until it has exited.
    pub fn signal_member(&mut self, i: usize, signal: Signal) -> Result<()> {
        let m = &mut self.members[i];
        let Some(mut child) = m.child.take() else {
            bail!("etcd member {} is not running", m.name);
        };
        eprintln!("harness: {signal:?} to etcd member {}", m.name);
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        let _ = kill(pid, signal);
        child.wait().context("waiting for etcd to exit")?;
        Ok(())
    }

    /// SIGKILL to member `i`.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        self.signal_member(i, Signal::SIGKILL)
    }

    /// A clean stop (SIGTERM) of member `i`; its data stays for a restart.
    pub fn stop_member(&mut self, i: usize) -> Result<()> {
        self.signal_member(i, Signal::SIGTERM)
    }

    /// `etcdctl --endpoints=<running members> args`, run in the hub namespace.
    pub fn etcdctl<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let endpoints = self.client_urls().join(",");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hub, "etcdctl"])
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .env("ETCDCTL_API", "3");
        if let Some(t) = &self.tls {
            c.arg(format!("--cacert={}", t.cacert.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        c.args(args);
        c
    }

    /// Runs `etcdctl args` and returns its stdout; fails with its stderr.
    pub fn ctl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.etcdctl(args);
        read(&mut c)
    }

    /// `etcdctl put KEY` with the value on stdin (any bytes, any size).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let mut c = self.etcdctl(["put", key]);
        eprintln!("$ {} <{} bytes>", show(&c), value.len());
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting etcdctl")?;
        child
            .stdin
            .take()
            .context("etcdctl stdin")?
            .write_all(value)
            .context("writing to etcdctl")?;
        let out = child.wait_with_output().context("waiting for etcdctl")?;
        ensure!(
            out.status.success(),
            "etcdctl put {key} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// The index of the member that leads now, asking every running member.
    pub fn leader(&self) -> Result<usize> {
        // `endpoint status -w simple`: "URL, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, ...".
        let out = self.ctl(["endpoint", "status", "-w", "simple"])?;
        for line in out.lines() {
            let fields: Vec<&str> = line.split(", ").collect();
            if fields.get(4) == Some(&"true") {
                if let Some(i) = self
                    .members
                    .iter()
                    .position(|m| m.client_url() == fields[0])
                {
                    return Ok(i);
                }
            }
        }
        bail!("no etcd member says it leads: {out}")
    }

    /// Waits until the running members agree on a leader and answer a linearizable read.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            let attempt = self
                .leader()
                .and_then(|l| self.ctl(["get", "/wgcable-harness-probe"]).map(|_| l));
            match attempt {
                Ok(l) => return Ok(l),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(e.context(format!("etcd has no leader after {timeout:?}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The revision etcd is at now.
    pub fn revision(&self) -> Result<i64> {
        // `get / -w fields` prints `"Revision" : N` among the header fields.
        let out = self.ctl(["get", "/", "-w", "fields"])?;
        out.lines()
            .find_map(|l| l.strip_prefix("\"Revision\" : "))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no revision in etcdctl's answer: {out}"))
    }

    /// Compacts history up to the current revision (a watch resuming from before it is then
    /// refused with the compaction revision).
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.ctl(["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }

    /// The tail of every member's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {} ({}) ---\n", m.name, m.log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(20));
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.wait();
            }
        }
        // Anything else still running in our namespaces (an etcdctl, a client).
        for ns in &self.namespaces {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a new thread inside network namespace `netns` (only that thread moves; sockets
/// it opens belong to `netns`). For a client of the cluster in a namespace of the harness.
pub fn spawn_in_netns<T, F>(netns: &str, f: F) -> Result<NetnsThread<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening network namespace {netns}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            // Never run `f` in the wrong namespace: without the move, the thread ends at once.
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            ok.then(f)
        })
        .context("spawning a thread")?;
    rx.recv()
        .context("the namespace thread died")?
        .with_context(|| format!("entering network namespace {netns}"))?;
    Ok(NetnsThread(handle))
}

/// A thread started by [`spawn_in_netns`].
#[derive(Debug)]
pub struct NetnsThread<T>(std::thread::JoinHandle<Option<T>>);

impl<T> NetnsThread<T> {
    /// Waits for the thread; a panic in it is passed on.
    pub fn join(self) -> T {
        match self.0.join() {
            Ok(Some(t)) => t,
            Ok(None) => unreachable!("spawn_in_netns fails when the thread cannot enter"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// A CA, a server certificate for `ips` (etcd serves clients with it) and a client
/// certificate, all EC P-256, made with `openssl` in `dir`.
fn make_certificates(dir: &Path, ips: &[Ipv4Addr]) -> Result<TlsFiles> {
    let p = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args);
        read(&mut c).context("making test certificates (apt-get install openssl)")
    };
    let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        ),
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca_pem, "-days", "2"]);
    args.extend(["-subj", "/CN=wgcable test CA"]);
    openssl(&args)?;
    for (name, cn) in [("server", "etcd"), ("client", "wgcable")] {
        let (key, csr, pem, ext) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&args)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(TlsFiles {
        cacert: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(args);
    read(&mut c).map(|_| ())
}

fn read(c: &mut Command) -> Result<String> {
    eprintln!("$ {}", show(c));
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", show(c)))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}: {}",
        show(c),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).with_context(|| format!("output of `{}` is not UTF-8", show(c)))
}

fn show(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}
