//! The cable driver against in-memory fakes of the kernel (netlink) and the WireGuard device:
//! no root, no sleeps. The fakes count every write, so tests can assert that something that is
//! already right is not touched.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use wgcable_api::{ConnectionStatus, Endpoint, EndpointSpec, BACKEND_CONFIG_PUBLIC_KEY};
use wgcable_engine::config::{DEFAULT_DEVICE, DEFAULT_PORT, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE};
use wgcable_engine::{CableDriver, DriverConfig, Error, Trigger, WireGuardDriver};
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};
use wgcable_metrics::GatewayMetrics;
use wgcable_netlink::{FakeNetlink, IpFamily, LinkKind, Netlink, Rule};
use wgcable_peers::{
    DeviceCall, DeviceStatus, DeviceUpdate, FakeWgDevice, PeerChange, PeerStatus, WgDevice,
};

/// What the tests ask of the device fake (wgcable-peers' `FakeWgDevice`, which behaves as the
/// kernel does and passes the same contract suite as the real backends), on our device.
trait DeviceExt {
    fn dev(&self) -> DeviceStatus;
    fn peer_of(&self, key: &PublicKey) -> Option<PeerStatus>;
    fn applies(&self) -> usize;
    fn reads(&self) -> usize;
    /// Simulates traffic and a handshake on a peer.
    fn traffic(&self, key: &PublicKey, handshake: SystemTime, rx: u64, tx: u64);
}

impl DeviceExt for FakeWgDevice {
    fn dev(&self) -> DeviceStatus {
        self.status(DEFAULT_DEVICE).expect("device exists")
    }
    fn peer_of(&self, key: &PublicKey) -> Option<PeerStatus> {
        self.peer(DEFAULT_DEVICE, key)
    }
    fn applies(&self) -> usize {
        self.calls(DeviceCall::Apply)
    }
    fn reads(&self) -> usize {
        self.calls(DeviceCall::Read)
    }
    fn traffic(&self, key: &PublicKey, handshake: SystemTime, rx: u64, tx: u64) {
        assert!(
            self.set_traffic(DEFAULT_DEVICE, key, Some(handshake), rx, tx),
            "no such peer"
        );
    }
}

struct Remote {
    key: PrivateKey,
    endpoint: Endpoint,
}

fn remote(cluster: &str, ip: &str, subnets: &[&str]) -> Remote {
    let key = PrivateKey::generate();
    let mut spec = EndpointSpec {
        cluster_id: cluster.to_string(),
        cable_name: format!("submariner-cable-{cluster}"),
        hostname: format!("gw-{cluster}"),
        subnets: subnets.iter().map(|s| s.to_string()).collect(),
        private_ip: ip.to_string(),
        backend: "wireguard".to_string(),
        ..EndpointSpec::default()
    };
    spec.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, key.public_key().to_base64());
    Remote {
        key,
        endpoint: Endpoint::new(spec),
    }
}

fn config() -> DriverConfig {
    DriverConfig {
        cluster_id: "cluster-a".into(),
        hostname: "gw-a".into(),
        local_subnets: vec![
            "10.201.0.0/16".parse().expect("cidr"),
            "fd00:201::/48".parse().expect("cidr"),
        ],
        private_ip: "192.168.77.11".parse().expect("ip"),
        public_ips: Vec::new(),
        namespace: None,
        nat: false,
        health_check_ips: vec![
            "10.201.0.1".parse().expect("ip"),
            "fd00:201::1".parse().expect("ip"),
        ],
        listen_port: DEFAULT_PORT,
        preshared_key: PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK),
        device: DEFAULT_DEVICE.into(),
        table: DEFAULT_TABLE,
        rule_priority: DEFAULT_RULE_PRIORITY,
        mtu: None,
    }
}

struct Harness {
    netlink: Arc<FakeNetlink>,
    device: Arc<FakeWgDevice>,
    metrics: Arc<GatewayMetrics>,
    driver: WireGuardDriver,
    key: PrivateKey,
}

/// A fake host with an underlay link (eth0, MTU 1500, 192.168.77.11/24) and a driver on it.
async fn harness() -> Harness {
    harness_with(config()).await
}

/// [`harness`] with another driver configuration.
async fn harness_with(config: DriverConfig) -> Harness {
    let netlink = Arc::new(FakeNetlink::new());
    netlink.set_wireguard_supported(true);
    let eth0 = netlink
        .link_add("eth0", &LinkKind::Dummy)
        .await
        .expect("eth0");
    netlink.link_set_up(eth0.index, true).await.expect("up");
    netlink.link_set_mtu(eth0.index, 1500).await.expect("mtu");
    netlink
        .addr_add(eth0.index, "192.168.77.11/24".parse().expect("cidr"))
        .await
        .expect("addr");
    let device = Arc::new(FakeWgDevice::new(netlink.clone()));
    let key = PrivateKey::generate();
    let metrics = Arc::new(GatewayMetrics::new().expect("metrics"));
    let driver = WireGuardDriver::new(
        config,
        key.clone(),
        netlink.clone(),
        device.clone(),
        metrics.clone(),
    )
    .expect("driver");
    Harness {
        netlink,
        device,
        metrics,
        driver,
        key,
    }
}

impl Harness {
    /// A second driver on the same host, as after a gateway restart with the same key.
    fn restart(&self) -> WireGuardDriver {
        let metrics = Arc::new(GatewayMetrics::new().expect("metrics"));
        WireGuardDriver::new(
            config(),
            self.key.clone(),
            self.netlink.clone(),
            self.device.clone(),
            metrics,
        )
        .expect("driver")
    }
    fn routes(&self) -> Vec<IpNet> {
        let mut r: Vec<IpNet> = self
            .netlink
            .routes(DEFAULT_TABLE)
            .into_iter()
            .map(|r| r.dst)
            .collect();
        r.sort();
        r
    }
    async fn connect(&self, r: &Remote) -> Result<String, Error> {
        let info = self.driver.nat_info(r.endpoint.clone());
        self.driver.connect_to_endpoint(&info).await
    }
}

fn nets(s: &[&str]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = s.iter().map(|n| n.parse().expect("cidr")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn connect_configures_peer_routes_rule_and_link() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote(
        "cluster-b",
        "192.168.77.12",
        &["10.202.0.0/16", "fd00:202::/48"],
    );
    let c = remote("cluster-c", "192.168.77.13", &["10.203.0.0/16"]);
    assert_eq!(h.connect(&b).await.expect("connect b"), "192.168.77.12");
    h.connect(&c).await.expect("connect c");

    let dev = h.device.dev();
    assert_eq!(dev.public_key, Some(h.key.public_key()));
    assert_eq!(dev.listen_port, Some(DEFAULT_PORT));
    assert_eq!(dev.peers.len(), 2);
    let pb = h.device.peer_of(&b.key.public_key()).expect("peer b");
    assert_eq!(
        pb.config.endpoint,
        Some("192.168.77.12:4500".parse().expect("addr"))
    );
    assert_eq!(pb.config.persistent_keepalive, Some(10));
    assert_eq!(
        pb.config.preshared_key,
        Some(PresharedKey::from_passphrase("default psk"))
    );
    let mut allowed = pb.config.allowed_ips.clone();
    allowed.sort();
    assert_eq!(allowed, nets(&["10.202.0.0/16", "fd00:202::/48"]));

    assert_eq!(
        h.routes(),
        nets(&["10.202.0.0/16", "10.203.0.0/16", "fd00:202::/48"])
    );
    let link = h.netlink.link(DEFAULT_DEVICE).expect("device link");
    for r in h.netlink.routes(DEFAULT_TABLE) {
        assert_eq!(r.oif, Some(link.index));
        let want: Option<IpAddr> = if r.dst.addr().is_ipv4() {
            Some("10.201.0.1".parse().expect("ip"))
        } else {
            Some("fd00:201::1".parse().expect("ip"))
        };
        assert_eq!(r.pref_src, want, "route {}", r.dst);
    }
    assert!(link.up, "device is up");
    assert_eq!(link.mtu, 1420, "underlay 1500 - 80");
    let mut addrs = h.netlink.addrs(link.index);
    addrs.sort();
    assert_eq!(addrs, nets(&["10.201.0.1/32", "fd00:201::1/128"]));
    let rules = h.netlink.rules();
    for family in [IpFamily::V4, IpFamily::V6] {
        assert!(
            rules.iter().any(|r| r.family == family
                && r.table == DEFAULT_TABLE
                && r.priority == Some(DEFAULT_RULE_PRIORITY)),
            "rule for {family:?} in {rules:?}"
        );
    }
    assert_eq!(h.driver.name(), "wireguard");
    assert!(h
        .driver
        .active_connections()
        .await
        .expect("active")
        .is_empty());
}

#[tokio::test]
async fn endpoint_change_updates_only_that_peer() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    let c = remote("cluster-c", "192.168.77.13", &["10.203.0.0/16"]);
    h.connect(&b).await.expect("b");
    h.connect(&c).await.expect("c");
    let before_c = h.device.peer_of(&c.key.public_key()).expect("c");
    h.netlink.clear_ops();
    let applies = h.device.applies();

    let mut b2 = Remote {
        key: b.key.clone(),
        endpoint: b.endpoint.clone(),
    };
    b2.endpoint.spec.private_ip = "192.168.77.22".into();
    h.connect(&b2).await.expect("b moved");

    assert_eq!(h.device.applies(), applies + 1, "one device update");
    let (_, last) = h.device.applied().last().cloned().expect("update");
    assert_eq!(
        last.peers.len(),
        1,
        "only cluster-b's peer changes: {last:?}"
    );
    assert!(
        matches!(&last.peers[0], PeerChange::Update { config, .. } if config.public_key == b.key.public_key())
    );
    assert_eq!(
        h.device.peer_of(&c.key.public_key()).expect("c"),
        before_c,
        "cluster-c untouched"
    );
    assert!(
        h.netlink.writes().is_empty(),
        "no route/rule/link writes: {:?}",
        h.netlink.writes()
    );
}

#[tokio::test]
async fn disconnect_removes_peer_routes_and_metrics() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    let c = remote("cluster-c", "192.168.77.13", &["10.203.0.0/16"]);
    h.connect(&b).await.expect("b");
    h.connect(&c).await.expect("c");
    h.driver.connections().await.expect("connections");
    assert!(h
        .metrics
        .encode_text()
        .expect("text")
        .contains("remote_cluster=\"cluster-c\""));

    h.driver
        .disconnect_from_endpoint(&c.endpoint)
        .await
        .expect("disconnect");
    assert!(h.device.peer_of(&c.key.public_key()).is_none());
    assert!(h.device.peer_of(&b.key.public_key()).is_some());
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));
    let text = h.metrics.encode_text().expect("text");
    assert!(
        !text.contains("remote_cluster=\"cluster-c\""),
        "cluster-c series left: {text}"
    );
    assert!(text.contains("remote_cluster=\"cluster-b\""));
    // Disconnecting twice, or an unknown cluster, is fine and changes nothing.
    h.netlink.clear_ops();
    h.driver
        .disconnect_from_endpoint(&c.endpoint)
        .await
        .expect("again");
    assert!(h.netlink.writes().is_empty());
}

#[tokio::test]
async fn key_change_replaces_the_peer() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    let b_new = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b_new).await.expect("b with a new key");
    let dev = h.device.dev();
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(dev.peers[0].config.public_key, b_new.key.public_key());
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));
}

#[tokio::test]
async fn refused_endpoints_touch_nothing() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    h.netlink.clear_ops();
    let applies = h.device.applies();

    let own_cluster = remote("cluster-a", "192.168.77.99", &["10.250.0.0/16"]);
    let overlaps_local = remote("evil-1", "192.168.77.98", &["10.201.5.0/24"]);
    let overlaps_b = remote("evil-2", "192.168.77.97", &["10.202.0.0/17"]);
    let mut own_key = remote("evil-3", "192.168.77.96", &["10.251.0.0/16"]);
    own_key
        .endpoint
        .spec
        .set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, h.key.public_key().to_base64());
    let mut b_key = remote("evil-4", "192.168.77.95", &["10.252.0.0/16"]);
    b_key
        .endpoint
        .spec
        .set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, b.key.public_key().to_base64());
    let mut bad_key = remote("evil-5", "192.168.77.94", &["10.253.0.0/16"]);
    bad_key
        .endpoint
        .spec
        .set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, "not-a-key".to_string());

    for (r, want) in [
        (&own_cluster, "refused"),
        (&overlaps_local, "refused"),
        (&overlaps_b, "refused"),
        (&own_key, "refused"),
        (&b_key, "refused"),
        (&bad_key, "invalid"),
    ] {
        let err = h.connect(r).await.expect_err("must be refused");
        let msg = wgcable_engine::chain(&err);
        assert!(err.is_endpoint_error(), "{msg}");
        assert!(msg.contains(want), "{msg}");
        assert!(
            msg.contains(&r.endpoint.spec.cluster_id),
            "message names the cluster: {msg}"
        );
    }
    assert_eq!(h.device.applies(), applies, "no device update");
    assert!(
        h.netlink.writes().is_empty(),
        "no netlink writes: {:?}",
        h.netlink.writes()
    );
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));
    assert_eq!(h.device.dev().peers.len(), 1);
    // The refused ones that are valid wait, listed as errors with the reason; the invalid one
    // is not remembered at all. A resync still touches nothing.
    let conns = h.driver.connections().await.expect("connections");
    let listed: Vec<(&str, ConnectionStatus)> = conns
        .iter()
        .map(|c| (c.endpoint.cluster_id.as_str(), c.status))
        .collect();
    assert_eq!(listed.len(), 6, "{listed:?}");
    assert!(!listed.iter().any(|(c, _)| *c == "evil-5"), "{listed:?}");
    for c in &conns {
        if c.endpoint.cluster_id != "cluster-b" {
            assert_eq!(c.status, ConnectionStatus::Error);
            assert!(
                c.status_message.starts_with("refused: "),
                "{}",
                c.status_message
            );
        }
    }
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(report.refused.len(), 5, "{report:?}");
    assert!(h.netlink.writes().is_empty(), "{:?}", h.netlink.writes());
}

#[tokio::test]
async fn a_waiting_endpoint_connects_once_its_conflict_is_gone() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    // A new cluster reusing B's subnets (say B was rebuilt under a new id) is refused while B
    // holds them, then connects on its own once B leaves.
    let b2 = remote("cluster-b2", "192.168.77.22", &["10.202.0.0/16"]);
    h.connect(&b2).await.expect_err("overlaps cluster-b");
    assert!(h.device.peer_of(&b2.key.public_key()).is_none());
    h.driver
        .disconnect_from_endpoint(&b.endpoint)
        .await
        .expect("b leaves");
    assert!(h.device.peer_of(&b.key.public_key()).is_none());
    assert!(
        h.device.peer_of(&b2.key.public_key()).is_some(),
        "b2 connected"
    );
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));
    let text = h.metrics.encode_text().expect("text");
    let repairs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wgcable_repairs_total{"))
        .collect();
    assert!(
        !repairs.is_empty(),
        "the repair counters are exported: {text}"
    );
    assert!(
        repairs.iter().all(|l| l.ends_with(" 0")),
        "an accepted endpoint is not drift: {repairs:?}"
    );
}

#[tokio::test]
async fn drift_is_repaired_and_counted() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");

    // Someone deletes our routes and rule and adds a peer by hand.
    let routes = h.netlink.routes(DEFAULT_TABLE);
    h.netlink.route_del(&routes).await.expect("del routes");
    for rule in h
        .netlink
        .rules()
        .into_iter()
        .filter(|r| r.table == DEFAULT_TABLE)
    {
        h.netlink.rule_del(&rule).await.expect("del rule");
    }
    let stranger = PrivateKey::generate().public_key();
    h.device
        .apply(
            DEFAULT_DEVICE,
            &DeviceUpdate {
                private_key: None,
                listen_port: None,
                peers: vec![PeerChange::Add(wgcable_peers::PeerConfig {
                    public_key: stranger,
                    endpoint: None,
                    allowed_ips: vec!["10.209.0.0/16".parse().expect("cidr")],
                    persistent_keepalive: None,
                    preshared_key: None,
                })],
            },
        )
        .await
        .expect("hand-added peer");

    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert_eq!(report.peers_removed, 1, "{report:?}");
    assert_eq!(report.routes_added, 1, "{report:?}");
    assert!(report.rules_added >= 1, "{report:?}");
    assert!(h.device.peer_of(&stranger).is_none());
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));
    assert!(h.netlink.rules().contains(&Rule {
        priority: Some(DEFAULT_RULE_PRIORITY),
        ..Rule::lookup(IpFamily::V4, DEFAULT_TABLE)
    }));
    let text = h.metrics.encode_text().expect("text");
    for what in ["peer", "route", "rule"] {
        assert!(
            text.contains(&format!("what=\"{what}\"")),
            "repair of {what} counted: {text}"
        );
    }

    // The whole device disappears (e.g. the userspace process was killed): recreated with the peer.
    h.device.delete(DEFAULT_DEVICE).await.expect("delete");
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(
        report.device_created && report.device_configured,
        "{report:?}"
    );
    assert!(h.device.peer_of(&b.key.public_key()).is_some());
    assert_eq!(h.routes(), nets(&["10.202.0.0/16"]));

    // And a resync with nothing wrong does nothing at all.
    h.netlink.clear_ops();
    let applies = h.device.applies();
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(h.device.applies(), applies);
    assert!(h.netlink.writes().is_empty(), "{:?}", h.netlink.writes());
}

#[tokio::test]
async fn restart_adopts_everything_without_a_single_write() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    let c = remote(
        "cluster-c",
        "192.168.77.13",
        &["10.203.0.0/16", "fd00:203::/48"],
    );
    h.connect(&b).await.expect("b");
    h.connect(&c).await.expect("c");

    h.netlink.clear_ops();
    let applies = h.device.applies();
    let restarted = h.restart();
    restarted.init().await.expect("init after restart");
    let infos = vec![
        restarted.nat_info(c.endpoint.clone()),
        restarted.nat_info(b.endpoint.clone()),
    ];
    let report = restarted.set_endpoints(infos).await.expect("adopt");
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(h.device.applies(), applies, "no device update at all");
    assert!(
        h.netlink.writes().is_empty(),
        "no netlink writes: {:?}",
        h.netlink.writes()
    );
}

#[tokio::test]
async fn incumbent_keeps_its_subnets_across_a_restart() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("zz-cluster", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    // After a restart a newcomer (sorting first by name) claims the same subnets.
    let newcomer = remote("aa-cluster", "192.168.77.66", &["10.202.0.0/16"]);
    let restarted = h.restart();
    let infos = vec![
        restarted.nat_info(newcomer.endpoint.clone()),
        restarted.nat_info(b.endpoint.clone()),
    ];
    let report = restarted.set_endpoints(infos).await.expect("adopt");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].0, "aa-cluster");
    assert!(
        h.device.peer_of(&b.key.public_key()).is_some(),
        "incumbent kept"
    );
    assert!(h.device.peer_of(&newcomer.key.public_key()).is_none());
    let conns = restarted.connections().await.expect("connections");
    let refused = conns
        .iter()
        .find(|c| c.endpoint.cluster_id == "aa-cluster")
        .expect("listed");
    assert_eq!(refused.status, ConnectionStatus::Error);
    assert!(
        refused.status_message.contains("refused"),
        "{}",
        refused.status_message
    );
}

#[tokio::test]
async fn status_follows_handshakes_and_feeds_metrics() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    let conns = h.driver.connections().await.expect("connections");
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns[0].status,
        ConnectionStatus::Connecting,
        "no handshake yet: {:?}",
        conns[0]
    );
    assert_eq!(conns[0].using_ip, "192.168.77.12");

    // A fresh handshake proves the peer: connected at the next poll, with its counters and
    // established time in the metrics.
    let handshake = SystemTime::now();
    h.device.traffic(&b.key.public_key(), handshake, 1000, 2000);
    let conns = h.driver.connections().await.expect("connections");
    assert_eq!(
        conns[0].status,
        ConnectionStatus::Connected,
        "{:?}",
        conns[0]
    );
    assert_eq!(conns[0].status_message, "Rx=1000 Bytes, Tx=2000 Bytes");
    let text = h.metrics.encode_text().expect("text");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("remote_cluster=\"cluster-b\""))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    };
    assert_eq!(
        line("submariner_gateway_rx_bytes").as_deref(),
        Some("1000"),
        "{text}"
    );
    assert_eq!(
        line("submariner_gateway_tx_bytes").as_deref(),
        Some("2000"),
        "{text}"
    );
    let established: f64 = line("submariner_connection_established_timestamp")
        .expect("established series")
        .parse()
        .expect("number");
    let hs = handshake
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!((established - hs).abs() < 1.0, "{established} vs {hs}");
    assert!(text.contains("status=\"connected\"} 1"), "{text}");
    assert!(
        !text.contains("status=\"connecting\"}"),
        "exactly one status series: {text}"
    );
    assert_eq!(h.driver.last_connections(), conns);
    assert!(h.driver.is_ready());
}

#[tokio::test]
async fn cleanup_removes_device_routes_and_rule() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote(
        "cluster-b",
        "192.168.77.12",
        &["10.202.0.0/16", "fd00:202::/48"],
    );
    h.connect(&b).await.expect("b");
    h.driver.cleanup().await.expect("cleanup");
    assert!(h.netlink.link(DEFAULT_DEVICE).is_none());
    assert!(h.netlink.routes(DEFAULT_TABLE).is_empty());
    assert!(h.netlink.rules().iter().all(|r| r.table != DEFAULT_TABLE));
    assert!(h.netlink.link("eth0").is_some(), "other links untouched");
    // Idempotent.
    h.driver.cleanup().await.expect("cleanup again");
}

#[tokio::test]
async fn local_endpoint_publishes_key_port_and_interface() {
    let h = harness().await;
    let ep = h.driver.local_endpoint();
    assert_eq!(ep.spec.cluster_id, "cluster-a");
    assert_eq!(ep.spec.backend, "wireguard");
    assert_eq!(
        ep.spec.public_key_str(),
        Some(h.key.public_key().to_base64().as_str())
    );
    assert_eq!(ep.spec.interface_name(), Some("submariner"));
    assert_eq!(ep.spec.udp_port().expect("port"), Some(4500));
    ep.spec.validate().expect("our own endpoint validates");
    let yaml = ep.to_yaml().expect("yaml");
    assert!(
        !yaml.contains(h.key.to_base64().as_str()),
        "private key never published"
    );
}

#[tokio::test]
async fn a_natted_peer_may_roam_but_a_new_public_ip_is_applied() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let mut b = remote("cluster-b", "10.0.0.12", &["10.202.0.0/16"]);
    b.endpoint.spec.nat_enabled = true;
    b.endpoint.spec.public_ip = "198.51.100.12".into();
    assert_eq!(h.connect(&b).await.expect("b"), "198.51.100.12");
    let key = b.key.public_key();
    assert_eq!(
        h.device.peer_of(&key).expect("peer").config.endpoint,
        Some("198.51.100.12:4500".parse().expect("addr"))
    );

    // The NAT maps the remote to another port; WireGuard follows its packets there.
    assert!(h.device.roam(
        DEFAULT_DEVICE,
        &key,
        "198.51.100.12:61000".parse().expect("addr")
    ));
    let applies = h.device.applies();
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(report.is_noop(), "roaming is not drift: {report:?}");
    assert_eq!(h.device.applies(), applies);
    assert_eq!(
        h.device.peer_of(&key).expect("peer").config.endpoint,
        Some("198.51.100.12:61000".parse().expect("addr"))
    );

    // The remote publishes a new public IP: that is applied.
    let mut moved = Remote {
        key: b.key.clone(),
        endpoint: b.endpoint.clone(),
    };
    moved.endpoint.spec.public_ip = "203.0.113.12".into();
    h.connect(&moved).await.expect("moved");
    assert_eq!(
        h.device.peer_of(&key).expect("peer").config.endpoint,
        Some("203.0.113.12:4500".parse().expect("addr"))
    );
}

#[tokio::test]
async fn a_peer_that_is_not_natted_is_put_back_on_its_endpoint() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    let key = b.key.public_key();
    assert!(h.device.roam(
        DEFAULT_DEVICE,
        &key,
        "192.168.77.99:4500".parse().expect("addr")
    ));
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert_eq!(report.peers_updated, 1, "{report:?}");
    assert_eq!(
        h.device.peer_of(&key).expect("peer").config.endpoint,
        Some("192.168.77.12:4500".parse().expect("addr"))
    );
}

#[tokio::test]
async fn a_connect_after_a_reconcile_is_applied_from_the_plan_alone() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    let c = remote("cluster-c", "192.168.77.13", &["10.203.0.0/16"]);
    h.connect(&b).await.expect("b");
    h.connect(&c).await.expect("c");

    h.netlink.clear_ops();
    let reads = h.device.reads();
    let applies = h.device.applies();
    let d = remote(
        "cluster-d",
        "192.168.77.14",
        &["10.204.0.0/16", "fd00:204::/48"],
    );
    h.connect(&d).await.expect("d");
    assert_eq!(h.device.reads(), reads, "no device read-back");
    assert_eq!(h.device.applies(), applies + 1, "one device update");
    assert_eq!(
        h.netlink.ops().len(),
        1,
        "one netlink request, no dumps: {:?}",
        h.netlink.ops()
    );
    assert_eq!(h.netlink.calls(wgcable_netlink::Method::RouteAdd), 1);
    assert_eq!(
        h.routes(),
        nets(&[
            "10.202.0.0/16",
            "10.203.0.0/16",
            "10.204.0.0/16",
            "fd00:204::/48"
        ])
    );

    h.netlink.clear_ops();
    h.driver
        .disconnect_from_endpoint(&c.endpoint)
        .await
        .expect("c leaves");
    assert_eq!(h.netlink.ops().len(), 1, "{:?}", h.netlink.ops());
    assert_eq!(
        h.routes(),
        nets(&["10.202.0.0/16", "10.204.0.0/16", "fd00:204::/48"])
    );
    assert!(h.device.peer_of(&c.key.public_key()).is_none());

    // What the incremental path did is exactly what a full reconcile wants.
    let report = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(report.is_noop(), "{report:?}");
}

#[tokio::test]
async fn a_stale_cache_falls_back_to_a_full_reconcile() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    // The device vanishes between reconciles (its userspace process was killed).
    h.device.delete(DEFAULT_DEVICE).await.expect("delete");
    let c = remote("cluster-c", "192.168.77.13", &["10.203.0.0/16"]);
    h.connect(&c).await.expect("c connects all the same");
    assert!(h.device.peer_of(&b.key.public_key()).is_some());
    assert!(h.device.peer_of(&c.key.public_key()).is_some());
    assert_eq!(h.routes(), nets(&["10.202.0.0/16", "10.203.0.0/16"]));
}

/// An IPv4-only gateway whose first IPv6 remote arrives by itself (a connect after a
/// reconcile, the incremental path): its IPv6 routes need the IPv6 rule at once, not at the
/// next resync. (The incremental path of the first engine added the routes but no rule.)
#[tokio::test]
async fn the_first_ipv6_remote_gets_its_rule_at_once() {
    let mut cfg = config();
    cfg.local_subnets = vec!["10.201.0.0/16".parse().expect("cidr")];
    cfg.health_check_ips = vec!["10.201.0.1".parse().expect("ip")];
    let h = harness_with(cfg).await;
    h.driver.init().await.expect("init");
    let b = remote("cluster-b", "192.168.77.12", &["10.202.0.0/16"]);
    h.connect(&b).await.expect("b");
    let families = |h: &Harness| {
        let mut f: Vec<IpFamily> = h
            .netlink
            .rules()
            .iter()
            .filter(|r| r.table == DEFAULT_TABLE)
            .map(|r| r.family)
            .collect();
        f.sort();
        f
    };
    assert_eq!(families(&h), [IpFamily::V4]);
    let c = remote(
        "cluster-c",
        "192.168.77.13",
        &["10.203.0.0/16", "fd00:203::/48"],
    );
    h.connect(&c).await.expect("c");
    assert!(h.routes().contains(&"fd00:203::/48".parse().expect("cidr")));
    assert_eq!(
        families(&h),
        [IpFamily::V4, IpFamily::V6],
        "the IPv6 rule came with the first IPv6 remote"
    );
}

/// One Endpoint the device refuses (a peer the kernel will not take, say 500 allowed IPs on a
/// kernel that cannot split them) must not keep the other tunnels from being configured: the
/// refused change is isolated, that cluster alone is refused with the device's reason and
/// counted, and the 40 others are applied in the same reconcile.
#[tokio::test]
async fn a_peer_the_device_refuses_is_isolated_and_the_others_are_applied() {
    let h = harness().await;
    h.driver.init().await.expect("init");
    let healthy: Vec<Remote> = (0..40u32)
        .map(|i| {
            remote(
                &format!("c{i}"),
                &format!("192.168.78.{}", i + 1),
                &[&format!("10.{}.0.0/16", 100 + i)],
            )
        })
        .collect();
    let bad = remote("big", "192.168.79.1", &["10.250.0.0/16"]);
    h.device
        .refuse_peer(bad.key.public_key(), nix::errno::Errno::EINVAL as i32);
    let infos = healthy
        .iter()
        .chain(std::iter::once(&bad))
        .map(|r| h.driver.nat_info(r.endpoint.clone()))
        .collect();
    let report = h
        .driver
        .set_endpoints(infos)
        .await
        .expect("the host itself is fine");
    for r in &healthy {
        assert!(
            h.device.peer_of(&r.key.public_key()).is_some(),
            "{} configured",
            r.endpoint.spec.cluster_id
        );
    }
    assert!(h.device.peer_of(&bad.key.public_key()).is_none());
    let bad_net: IpNet = "10.250.0.0/16".parse().expect("cidr");
    assert!(
        !h.routes().contains(&bad_net),
        "no route into a peer that is not there"
    );
    assert_eq!(h.routes().len(), 40);
    assert_eq!(report.peers_added, 40, "{report}");
    assert!(
        report
            .refused
            .iter()
            .any(|(c, why)| c == "big" && why.contains("refused")),
        "{:?}",
        report.refused
    );
    let text = h.metrics.encode_text().expect("text");
    assert!(
        text.contains("wgcable_endpoints_rejected_total{reason=\"device\"} 1"),
        "counted once"
    );
    let conns = h.driver.connections().await.expect("connections");
    let big = conns
        .iter()
        .find(|c| c.endpoint.cluster_id == "big")
        .expect("listed");
    assert_eq!(big.status, ConnectionStatus::Error);
    assert!(
        big.status_message.contains("device refused"),
        "{}",
        big.status_message
    );
    // It stays refused (no retry at every resync) until its Endpoint changes.
    let applies = h.device.applies();
    let again = h.driver.reconcile(Trigger::Resync).await.expect("resync");
    assert!(again.is_noop(), "{again}");
    assert_eq!(h.device.applies(), applies);
}
