//! Control-plane scale benchmark (issue 8, cases 1 to 3): the real driver on the real kernel
//! and a real `wireguard-go` (or, with `--backend kernel`, kernel WireGuard), against the same
//! work done by hand with `wg` and `ip`.
//!
//! One invocation is one run:
//! 1. cold sync, baseline: `wireguard-go` (kernel: `ip link add ... type wireguard`),
//!    `wg setconf` of N peers, one `ip -batch` with the link, the address, the 2N routes and
//!    the rule; then the device is deleted.
//! 2. cold sync, wgcable: `WireGuardDriver::init` + `set_endpoints` of the same N endpoints
//!    (with fresh keys), from no device to every peer and route in place.
//! 3. status poll: `connections()` over the N peers against `wg show DEV dump`.
//! 4. incremental changes with the N connected: one cluster's endpoint IP changes, one
//!    cluster is added, one removed; each is timed and its device and netlink operations are
//!    counted through decorators around the `WgDevice` and `Netlink` seams. A no-op resync
//!    is timed as well.
//!
//! Every figure is printed as `RESULT <name> <value>` (milliseconds unless the name says
//! otherwise) for `cargo xtask bench`, which runs this several times and prints medians.
//!
//! `--backend kernel` needs a kernel with WireGuard: `cargo xtask bench --vm` runs it in the VM
//! of `cargo xtask vm`, since the machines here have none.
//!
//! Namespaces: with `--in-namespace` the caller (xtask) has put us in a network namespace of
//! its own, which it tears down; otherwise (plain `cargo bench -p wgcable-engine`) we unshare
//! one ourselves, which needs root (without it, one line says the bench was skipped). Either
//! way we enter a private mount namespace and mount a tmpfs on /run/wireguard, so our
//! `wireguard-go` control sockets never mix with the host's or another gateway's.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::IpNet;
use wgcable_api::{Endpoint, EndpointSpec, NatEndpointInfo, BACKEND_WIREGUARD};
use wgcable_engine::driver::cleanup_host;
use wgcable_engine::{CableDriver, DriverConfig, Trigger, WireGuardDriver};
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};
use wgcable_metrics::GatewayMetrics;
use wgcable_netlink::{Link, LinkKind, Netlink, Route, RouteLookup, RouteSpec, RtNetlink, Rule};
use wgcable_peers::{
    BackendKind, DeviceStatus, DeviceUpdate, KernelDevice, PeerChange, UserspaceConfig,
    UserspaceDevice, WgDevice,
};

type Result<T> = std::result::Result<T, Box<dyn StdError>>;

const DEVICE: &str = "submariner";
const BASELINE_DEVICE: &str = "wgbase";
const TABLE: u32 = 150;
const RULE_PRIORITY: u32 = 100;
const PORT: u16 = 4500;
const BASELINE_PORT: u16 = 4501;
const MTU: u32 = 1420;
const LOCAL_SUBNET: &str = "172.16.0.0/16";
const HEALTH_CHECK_IP: &str = "172.16.0.1";
const UNDERLAY_IP: &str = "192.168.0.1";
/// The underlay next hop towards the generated remote gateways (nobody answers there).
const NEXT_HOP: &str = "192.168.0.2";
const NEXT_HOP_MAC: &str = "02:00:00:00:00:02";
/// How many times each status poll is timed within one run (the median is printed).
const POLLS: usize = 5;

// ---- Counting decorators ------------------------------------------------------------------

/// What went through a seam: calls per operation, and the items (routes, peers) they carried.
#[derive(Debug, Default, Clone)]
struct Counts {
    calls: BTreeMap<&'static str, usize>,
    /// Routes added or deleted, by destination.
    routes_added: Vec<IpNet>,
    routes_deleted: Vec<IpNet>,
    /// Peers changed on the device, by public key.
    peers_touched: BTreeSet<PublicKey>,
    peer_changes: usize,
}

impl Counts {
    fn call(&mut self, op: &'static str) {
        *self.calls.entry(op).or_default() += 1;
    }

    fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        for (op, n) in &self.calls {
            let _ = write!(s, "{op}={n} ");
        }
        let _ = write!(
            s,
            "| routes +{} -{} | peer changes {} on {} peer(s)",
            self.routes_added.len(),
            self.routes_deleted.len(),
            self.peer_changes,
            self.peers_touched.len()
        );
        s
    }
}

#[derive(Debug, Default, Clone)]
struct Counter(Arc<Mutex<Counts>>);

impl Counter {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        if let Ok(mut c) = self.0.lock() {
            f(&mut c);
        }
    }

    /// Returns what was counted so far and starts again from zero.
    fn take(&self) -> Counts {
        self.0
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Counts every netlink operation the driver makes, then passes it on to the kernel.
struct CountingNetlink {
    inner: Arc<dyn Netlink>,
    counter: Counter,
}

#[async_trait]
impl Netlink for CountingNetlink {
    async fn link_get(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Link>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_get"));
        self.inner.link_get(name).await
    }
    async fn link_get_by_index(
        &self,
        index: u32,
    ) -> std::result::Result<Option<Link>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_get_by_index"));
        self.inner.link_get_by_index(index).await
    }
    async fn link_list(&self) -> std::result::Result<Vec<Link>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_list"));
        self.inner.link_list().await
    }
    async fn link_add(
        &self,
        name: &str,
        kind: &LinkKind,
    ) -> std::result::Result<Link, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_add"));
        self.inner.link_add(name, kind).await
    }
    async fn link_del(&self, index: u32) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_del"));
        self.inner.link_del(index).await
    }
    async fn link_set_up(
        &self,
        index: u32,
        up: bool,
    ) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_set_up"));
        self.inner.link_set_up(index, up).await
    }
    async fn link_set_mtu(
        &self,
        index: u32,
        mtu: u32,
    ) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("link_set_mtu"));
        self.inner.link_set_mtu(index, mtu).await
    }
    async fn addr_list(
        &self,
        index: u32,
    ) -> std::result::Result<Vec<IpNet>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("addr_list"));
        self.inner.addr_list(index).await
    }
    async fn addr_add(
        &self,
        index: u32,
        addr: IpNet,
    ) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("addr_add"));
        self.inner.addr_add(index, addr).await
    }
    async fn addr_del(
        &self,
        index: u32,
        addr: IpNet,
    ) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("addr_del"));
        self.inner.addr_del(index, addr).await
    }
    async fn route_list(
        &self,
        table: u32,
    ) -> std::result::Result<Vec<Route>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("route_list"));
        self.inner.route_list(table).await
    }
    async fn route_add(
        &self,
        routes: &[RouteSpec],
    ) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| {
            c.call("route_add");
            c.routes_added.extend(routes.iter().map(|r| r.dst));
        });
        self.inner.route_add(routes).await
    }
    async fn route_del(&self, routes: &[Route]) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| {
            c.call("route_del");
            c.routes_deleted.extend(routes.iter().map(|r| r.dst));
        });
        self.inner.route_del(routes).await
    }
    async fn rule_list(&self) -> std::result::Result<Vec<Rule>, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("rule_list"));
        self.inner.rule_list().await
    }
    async fn rule_add(&self, rule: &Rule) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("rule_add"));
        self.inner.rule_add(rule).await
    }
    async fn rule_del(&self, rule: &Rule) -> std::result::Result<(), wgcable_netlink::Error> {
        self.counter.with(|c| c.call("rule_del"));
        self.inner.rule_del(rule).await
    }
    async fn route_get(
        &self,
        dst: IpAddr,
    ) -> std::result::Result<RouteLookup, wgcable_netlink::Error> {
        self.counter.with(|c| c.call("route_get"));
        self.inner.route_get(dst).await
    }
}

/// Counts every device operation and the peers each update touches.
struct CountingDevice {
    inner: Arc<dyn WgDevice>,
    counter: Counter,
}

#[async_trait]
impl WgDevice for CountingDevice {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    async fn ensure(&self, name: &str) -> std::result::Result<bool, wgcable_peers::Error> {
        self.counter.with(|c| c.call("dev_ensure"));
        self.inner.ensure(name).await
    }
    async fn read(
        &self,
        name: &str,
    ) -> std::result::Result<Option<DeviceStatus>, wgcable_peers::Error> {
        self.counter.with(|c| c.call("dev_read"));
        self.inner.read(name).await
    }
    async fn apply(
        &self,
        name: &str,
        update: &DeviceUpdate,
    ) -> std::result::Result<(), wgcable_peers::Error> {
        self.counter.with(|c| {
            c.call("dev_apply");
            c.peer_changes += update.peers.len();
            c.peers_touched
                .extend(update.peers.iter().map(|p: &PeerChange| *p.public_key()));
        });
        self.inner.apply(name, update).await
    }
    async fn delete(&self, name: &str) -> std::result::Result<(), wgcable_peers::Error> {
        self.counter.with(|c| c.call("dev_delete"));
        self.inner.delete(name).await
    }
}

// ---- Generated clusters -------------------------------------------------------------------

/// One generated remote cluster: its own key, two /24 subnets, an underlay address.
struct Remote {
    key: PublicKey,
    ip: String,
    subnets: [String; 2],
}

fn remote(i: u32, ip_offset: u32) -> Remote {
    let subnet = |n: u32| format!("10.{}.{}.0/24", n >> 8, n & 0xff);
    let n = i + ip_offset;
    Remote {
        key: PrivateKey::generate().public_key(),
        ip: format!("198.18.{}.{}", (n >> 8) & 0xff, n & 0xff),
        subnets: [subnet(2 * i), subnet(2 * i + 1)],
    }
}

fn info(i: u32, r: &Remote) -> NatEndpointInfo {
    let mut spec = EndpointSpec {
        cluster_id: format!("c{i}"),
        cable_name: format!("submariner-cable-c{i}"),
        hostname: format!("gw-c{i}"),
        subnets: r.subnets.to_vec(),
        private_ip: r.ip.clone(),
        backend: BACKEND_WIREGUARD.to_owned(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&r.key);
    NatEndpointInfo {
        endpoint: Endpoint::new(spec),
        use_ip: r.ip.clone(),
        use_nat: false,
    }
}

// ---- Helpers ------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn result(name: &str, value: f64) {
    println!("RESULT {name} {value:.4}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs a command to completion; fails with its stderr unless it exits 0.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Enters the namespaces the bench works in; see the crate doc.
fn enter_namespaces(in_namespace: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let flags = if in_namespace {
        CloneFlags::CLONE_NEWNS
    } else {
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET
    };
    unshare(flags).map_err(|e| format!("unsharing namespaces ({e}); run as root"))?;
    // Private first, so the tmpfs below stays ours and never shows in the host's mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private in our mount namespace: {e}"))?;
    std::fs::create_dir_all("/run/wireguard")?;
    mount(
        Some("tmpfs"),
        "/run/wireguard",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on /run/wireguard: {e}"))?;
    Ok(())
}

/// An underlay for the generated remote gateways: a veth whose far end nobody answers on,
/// and a route to 198.18.0.0/15 through it, so the driver finds an MTU (1500) and
/// handshakes leave through a real link as they would on a gateway.
fn ensure_underlay() -> Result<()> {
    if run("ip", &["link", "show", "ul0"]).is_ok() {
        return Ok(());
    }
    run("ip", &["link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0p",
            "address",
            NEXT_HOP_MAC,
        ],
    )?;
    run(
        "ip",
        &["addr", "add", &format!("{UNDERLAY_IP}/24"), "dev", "ul0"],
    )?;
    run("ip", &["link", "set", "ul0", "up"])?;
    run("ip", &["link", "set", "ul0p", "up"])?;
    // A permanent neighbour for the next hop: with an unresolved one, the kernel parks every
    // handshake in the ARP queue, charged to wireguard-go's socket, until its send buffer is
    // full and sends block for seconds (1,000 peers with keepalive then take minutes to
    // configure, with `wg` as with wgcable: a test-bed artefact, not a WireGuard cost).
    run(
        "ip",
        &[
            "neigh",
            "replace",
            NEXT_HOP,
            "lladdr",
            NEXT_HOP_MAC,
            "dev",
            "ul0",
            "nud",
            "permanent",
        ],
    )?;
    run("ip", &["route", "add", "198.18.0.0/15", "via", NEXT_HOP])?;
    Ok(())
}

/// The device backend both sides of the bench use: the driver's `WgDevice`, and what the
/// baseline creates by hand.
fn device_of(backend: BackendKind, netlink: &Arc<RtNetlink>) -> Arc<dyn WgDevice> {
    match backend {
        BackendKind::Kernel => Arc::new(KernelDevice::new(netlink.clone())),
        BackendKind::Userspace => Arc::new(UserspaceDevice::new(UserspaceConfig::from_env())),
    }
}

// ---- The cases ----------------------------------------------------------------------------

/// Case 1, baseline: the same device, peers, address, routes and rule, by hand. Returns the
/// total time; prints its parts.
fn baseline_cold(
    remotes: &[Remote],
    psk: &PresharedKey,
    dir: &Path,
    backend: BackendKind,
) -> Result<Duration> {
    let private = PrivateKey::generate();
    let mut conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {BASELINE_PORT}\n",
        &*private.to_base64()
    );
    let psk = psk.to_base64();
    for r in remotes {
        let _ = write!(
            conf,
            "\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = {}:{PORT}\nAllowedIPs = {}, {}\nPersistentKeepalive = {}\n",
            r.key.to_base64(),
            &*psk,
            r.ip,
            r.subnets[0],
            r.subnets[1],
            wgcable_peers::KEEPALIVE.as_secs()
        );
    }
    let conf_path = dir.join("wgbase.conf");
    std::fs::write(&conf_path, conf)?;
    let mut batch = format!(
        "link set {BASELINE_DEVICE} mtu {MTU} up\naddr add {HEALTH_CHECK_IP}/32 dev {BASELINE_DEVICE}\n"
    );
    for r in remotes {
        for s in &r.subnets {
            let _ = writeln!(
                batch,
                "route replace {s} dev {BASELINE_DEVICE} table {TABLE} src {HEALTH_CHECK_IP}"
            );
        }
    }
    let _ = writeln!(batch, "rule add pref {RULE_PRIORITY} table {TABLE}");
    let batch_path = dir.join("wgbase.batch");
    std::fs::write(&batch_path, batch)?;
    let conf_arg = conf_path.to_string_lossy().into_owned();
    let batch_arg = batch_path.to_string_lossy().into_owned();

    let start = Instant::now();
    match backend {
        BackendKind::Kernel => {
            run("ip", &["link", "add", BASELINE_DEVICE, "type", "wireguard"])?;
        }
        BackendKind::Userspace => {
            // Without -f, wireguard-go returns once the device and its control socket exist.
            // Its daemon keeps whatever stdout/stderr it is given: no pipes, or we would wait
            // forever.
            let status = Command::new("wireguard-go")
                .arg(BASELINE_DEVICE)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("starting wireguard-go: {e}"))?;
            if !status.success() {
                return Err(format!("wireguard-go {BASELINE_DEVICE} failed: {status}").into());
            }
        }
    }
    let t_dev = start.elapsed();
    run("wg", &["setconf", BASELINE_DEVICE, &conf_arg])?;
    let t_conf = start.elapsed();
    run("ip", &["-batch", &batch_arg])?;
    let total = start.elapsed();
    println!(
        "  baseline cold sync: {:.1} ms ({} {:.1}, wg setconf {:.1}, ip -batch {:.1})",
        ms(total),
        match backend {
            BackendKind::Kernel => "ip link add",
            BackendKind::Userspace => "wireguard-go",
        },
        ms(t_dev),
        ms(t_conf - t_dev),
        ms(total - t_conf)
    );
    result("cold.baseline.device", ms(t_dev));
    result("cold.baseline.wg_setconf", ms(t_conf - t_dev));
    result("cold.baseline.ip_batch", ms(total - t_conf));

    // Check that the baseline did the whole job, then remove it (wireguard-go exits when its
    // link goes; the routes go with the link).
    let dump = run("wg", &["show", BASELINE_DEVICE, "dump"])?;
    let peers = dump.lines().count().saturating_sub(1);
    let routes = run("ip", &["route", "show", "table", &TABLE.to_string()])?
        .lines()
        .count();
    if peers != remotes.len() || routes != 2 * remotes.len() {
        return Err(format!("baseline left {peers} peers and {routes} routes").into());
    }
    // Not timed: under TCG the kernel takes about 20 ms per peer to delete a link.
    let start = Instant::now();
    run("ip", &["link", "del", BASELINE_DEVICE])?;
    println!(
        "  (baseline device deleted in {:.1} s, not part of any figure)",
        start.elapsed().as_secs_f64()
    );
    run(
        "ip",
        &[
            "rule",
            "del",
            "pref",
            &RULE_PRIORITY.to_string(),
            "table",
            &TABLE.to_string(),
        ],
    )?;
    let _ = std::fs::remove_file(&conf_path);
    Ok(total)
}

struct Driver {
    driver: WireGuardDriver,
    netlink: Counter,
    device: Counter,
}

impl Driver {
    fn take(&self) -> Counts {
        let mut n = self.netlink.take();
        let d = self.device.take();
        n.calls.extend(d.calls);
        n.peers_touched = d.peers_touched;
        n.peer_changes = d.peer_changes;
        n
    }
}

fn driver(psk: &PresharedKey, backend: BackendKind) -> Result<Driver> {
    let (nl, conn) = RtNetlink::connect()?;
    tokio::spawn(conn);
    let nl = Arc::new(nl);
    let netlink_counter = Counter::default();
    let device_counter = Counter::default();
    let netlink: Arc<dyn Netlink> = Arc::new(CountingNetlink {
        inner: nl.clone(),
        counter: netlink_counter.clone(),
    });
    let device: Arc<dyn WgDevice> = Arc::new(CountingDevice {
        inner: device_of(backend, &nl),
        counter: device_counter.clone(),
    });
    let config = DriverConfig {
        cluster_id: "local".into(),
        hostname: "gw-local".into(),
        local_subnets: vec![LOCAL_SUBNET.parse()?],
        private_ip: UNDERLAY_IP.parse()?,
        public_ips: Vec::new(),
        namespace: None,
        nat: false,
        health_check_ips: vec![HEALTH_CHECK_IP.parse()?],
        listen_port: PORT,
        preshared_key: psk.clone(),
        device: DEVICE.into(),
        table: TABLE,
        rule_priority: RULE_PRIORITY,
        mtu: None,
    };
    let metrics = Arc::new(GatewayMetrics::new()?);
    let driver = WireGuardDriver::new(config, PrivateKey::generate(), netlink, device, metrics)?;
    Ok(Driver {
        driver,
        netlink: netlink_counter,
        device: device_counter,
    })
}

/// Prints one incremental change and fails if it touched more than `peer` and `subnets`.
fn report_change(
    name: &str,
    took: Duration,
    counts: &Counts,
    peer: &PublicKey,
    subnets: &[String],
) -> Result<()> {
    println!("  {name}: {:.2} ms; {}", ms(took), counts.summary());
    result(&format!("incr.{name}"), ms(took));
    result(&format!("incr.{name}.ops"), counts.total_calls() as f64);
    result(
        &format!("incr.{name}.peer_changes"),
        counts.peer_changes as f64,
    );
    result(
        &format!("incr.{name}.route_changes"),
        (counts.routes_added.len() + counts.routes_deleted.len()) as f64,
    );
    let foreign_peer = counts.peers_touched.iter().any(|k| k != peer);
    let foreign_route = counts
        .routes_added
        .iter()
        .chain(&counts.routes_deleted)
        .any(|dst| !subnets.contains(&dst.to_string()));
    let only = !foreign_peer && !foreign_route;
    result(
        &format!("incr.{name}.only_that_peer"),
        if only { 1.0 } else { 0.0 },
    );
    if !only {
        return Err(format!("{name} touched other peers or routes: {}", counts.summary()).into());
    }
    Ok(())
}

async fn bench(peers: u32, backend: BackendKind) -> Result<()> {
    ensure_underlay()?;
    let dir = tempfile::tempdir()?;
    let psk = PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK);
    let remotes: Vec<Remote> = (0..peers).map(|i| remote(i, 0)).collect();
    let infos: Vec<NatEndpointInfo> = remotes
        .iter()
        .enumerate()
        .map(|(i, r)| info(i as u32, r))
        .collect();

    // Case 1, baseline first (it leaves nothing behind), then the driver.
    let baseline = baseline_cold(&remotes, &psk, dir.path(), backend)?;
    result("cold.baseline", ms(baseline));

    let d = driver(&psk, backend)?;
    let start = Instant::now();
    d.driver.init().await?;
    let report = d.driver.set_endpoints(infos.clone()).await?;
    let cold = start.elapsed();
    let counts = d.take();
    println!(
        "  wgcable cold sync: {:.1} ms ({} peers, {} routes, {} rule(s) added); {}",
        ms(cold),
        report.peers_added,
        report.routes_added,
        report.rules_added,
        counts.summary()
    );
    result("cold.wgcable", ms(cold));
    result("cold.wgcable.ops", counts.total_calls() as f64);
    let observed = d.driver.connections().await?;
    let routes = run("ip", &["route", "show", "table", &TABLE.to_string()])?
        .lines()
        .count();
    if report.peers_added != peers as usize
        || observed.len() != peers as usize
        || routes != 2 * peers as usize
    {
        return Err(format!(
            "wgcable cold sync left {} peers, {} connections and {routes} routes",
            report.peers_added,
            observed.len()
        )
        .into());
    }

    // Case 3: the status poll against the same device.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..POLLS {
        let start = Instant::now();
        let conns = d.driver.connections().await?;
        ours.push(ms(start.elapsed()));
        std::hint::black_box(conns);
        let start = Instant::now();
        let dump = run("wg", &["show", DEVICE, "dump"])?;
        theirs.push(ms(start.elapsed()));
        std::hint::black_box(dump);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!("  status poll: connections() {ours:.2} ms, wg show dump {theirs:.2} ms (medians of {POLLS})");
    result("poll.wgcable", ours);
    result("poll.baseline", theirs);
    let _ = d.take();

    // Case 2: incremental changes with every peer connected.
    let start = Instant::now();
    let noop = d.driver.reconcile(Trigger::Resync).await?;
    let took = start.elapsed();
    let counts = d.take();
    println!(
        "  resync, nothing to change: {:.2} ms; {}",
        ms(took),
        counts.summary()
    );
    result("incr.resync_noop", ms(took));
    result("incr.resync_noop.ops", counts.total_calls() as f64);
    if !noop.is_noop() {
        return Err(
            format!("a resync right after the cold sync changed something: {noop:?}").into(),
        );
    }

    let moved_i = peers / 2;
    let mut moved = remote(moved_i, 0);
    moved.key = remotes[moved_i as usize].key;
    moved.ip = format!("198.19.{}.{}", (moved_i >> 8) & 0xff, moved_i & 0xff);
    let start = Instant::now();
    d.driver.connect_to_endpoint(&info(moved_i, &moved)).await?;
    let took = start.elapsed();
    report_change(
        "endpoint_ip_changed",
        took,
        &d.take(),
        &moved.key,
        &moved.subnets,
    )?;

    let added = remote(peers, 0);
    let start = Instant::now();
    d.driver.connect_to_endpoint(&info(peers, &added)).await?;
    let took = start.elapsed();
    report_change("cluster_added", took, &d.take(), &added.key, &added.subnets)?;

    let removed_i = 1;
    let start = Instant::now();
    d.driver
        .disconnect_from_endpoint(&infos[removed_i].endpoint)
        .await?;
    let took = start.elapsed();
    let r = &remotes[removed_i];
    report_change("cluster_removed", took, &d.take(), &r.key, &r.subnets)?;

    // Leave nothing behind: rule, routes, device and its wireguard-go.
    let nl = RtNetlink::connect().map(|(nl, conn)| {
        tokio::spawn(conn);
        Arc::new(nl)
    })?;
    let device = device_of(backend, &nl);
    let start = Instant::now();
    cleanup_host(&*nl, Some(&*device), DEVICE, TABLE, RULE_PRIORITY).await?;
    println!(
        "  (wgcable's device cleaned up in {:.1} s, not part of any figure)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; xtask passes `--in-namespace`, `--peers N` and
    // `--backend kernel|userspace`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let in_namespace = args.iter().any(|a| a == "--in-namespace");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let peers = value_of("--peers")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000u32);
    let backend = match value_of("--backend").map(String::as_str) {
        None | Some("userspace") => BackendKind::Userspace,
        Some("kernel") => BackendKind::Kernel,
        Some(_) => {
            eprintln!("scale bench: --backend takes kernel or userspace");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        println!("scale bench skipped: it needs root (network and mount namespaces, wireguard-go)");
        return;
    }
    // The namespaces are entered on this thread, before the runtime's threads exist, so that
    // every worker (and every process they start) lives in them.
    if let Err(e) = enter_namespaces(in_namespace) {
        eprintln!("scale bench: {e}");
        std::process::exit(1);
    }
    println!(
        "scale bench: {peers} remote clusters, 2 subnets each, {} WireGuard",
        backend.as_str()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    if let Err(e) = runtime.block_on(bench(peers, backend)) {
        eprintln!("scale bench failed: {e}");
        // Do not leave a wireguard-go behind in a namespace nobody will delete.
        let _ = run("ip", &["link", "del", DEVICE]);
        let _ = run("ip", &["link", "del", BASELINE_DEVICE]);
        std::process::exit(1);
    }
}
