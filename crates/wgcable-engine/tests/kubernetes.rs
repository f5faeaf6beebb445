//! The gateway loop driven by the Kubernetes source and the Lease elector (wgcable-k8s),
//! against its in-memory API server behind kube's real client, with the in-memory kernel
//! (`FakeNetlink`) and device (`FakeWgDevice`): Endpoints in the API become peers and routes,
//! the Gateway status is written, a standby that takes over publishes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use wgcable_broker::{AlwaysLeader, LeaderElector};
use wgcable_engine::config::{DEFAULT_DEVICE, DEFAULT_PORT, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE};
use wgcable_engine::gateway::BuildInfo;
use wgcable_engine::{DriverConfig, Gateway, GatewayConfig};
use wgcable_k8s::testing::{
    endpoint_object, FakeApiServer, FaultKind, FaultMatch, ENDPOINTS, GATEWAYS, LEASES,
};
use wgcable_k8s::{KubernetesConfig, KubernetesSource, LeaseElector, LeaseTimings, LocalAccess};
use wgcable_keys::{PresharedKey, PrivateKey, PublicKey};
use wgcable_netlink::{FakeNetlink, LinkKind, Netlink};
use wgcable_peers::{BackendPreference, FakeWgDevice};

const NS: &str = "submariner-operator";

fn driver_config() -> DriverConfig {
    DriverConfig {
        cluster_id: "cluster-a".into(),
        hostname: "node-a".into(),
        local_subnets: vec!["10.201.0.0/16".parse().expect("cidr")],
        private_ip: "192.168.77.11".parse().expect("ip"),
        public_ips: Vec::new(),
        namespace: Some(NS.into()),
        nat: false,
        health_check_ips: Vec::new(),
        listen_port: DEFAULT_PORT,
        preshared_key: PresharedKey::from_passphrase("a test pre-shared key"),
        device: DEFAULT_DEVICE.into(),
        table: DEFAULT_TABLE,
        rule_priority: DEFAULT_RULE_PRIORITY,
        mtu: None,
    }
}

fn k8s_config(lease: LeaseTimings) -> KubernetesConfig {
    KubernetesConfig {
        namespace: NS.into(),
        cluster_id: "cluster-a".into(),
        node_name: "node-a".into(),
        pod_name: None,
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.201.0.0/16".into()],
        service_cidrs: Vec::new(),
        global_cidrs: Vec::new(),
        local: LocalAccess::Infer,
        broker: None,
        lease,
        resync_interval: Duration::from_secs(3600),
        version: "wgcable-test".into(),
    }
}

struct Host {
    netlink: Arc<FakeNetlink>,
    device: Arc<FakeWgDevice>,
}

/// A fake host with an underlay link (eth0, 192.168.77.11/24).
async fn host() -> Host {
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
    Host { netlink, device }
}

/// Runs a gateway on `host` with the Kubernetes source on `server` until `stop` fires.
async fn start(
    server: &FakeApiServer,
    host: &Host,
    leader: Arc<dyn LeaderElector>,
    state: &tempfile::TempDir,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), wgcable_engine::Error>>,
) {
    let config = GatewayConfig {
        driver: driver_config(),
        backend: BackendPreference::Auto,
        state_dir: state.path().to_owned(),
        key_dir: None,
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        status_interval: Duration::from_millis(100),
        resync_interval: Duration::from_secs(1),
        health_check: None,
        admission: Default::default(),
        psk_refresh: None,
        build: BuildInfo::default(),
    };
    let source =
        KubernetesSource::new(server.client(NS), None, k8s_config(LeaseTimings::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = Gateway::builder(config)
        .source(Box::new(source))
        .leader(leader)
        .netlink(host.netlink.clone())
        .device(host.device.clone())
        .private_key(PrivateKey::generate())
        .listener(listener);
    let task = tokio::spawn(gateway.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Polls `condition` every 50 ms for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn remote_key() -> PrivateKey {
    PrivateKey::generate()
}

fn has_route(host: &Host, dst: &str) -> bool {
    let dst = dst.parse().expect("cidr");
    host.netlink
        .routes(DEFAULT_TABLE)
        .iter()
        .any(|r| r.dst == dst)
}

fn peer(host: &Host, key: &PublicKey) -> bool {
    host.device.peer(DEFAULT_DEVICE, key).is_some()
}

fn gateway_status(server: &FakeApiServer) -> Option<Value> {
    server
        .get(GATEWAYS, NS, "node-a")
        .map(|g| g["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_in_the_api_become_peers_and_routes_and_the_gateway_status_is_written() {
    let server = FakeApiServer::new();
    let b = remote_key();
    let b_public = b.public_key();
    let b_object = server.insert(
        ENDPOINTS,
        NS,
        endpoint_object(
            "cluster-b",
            "192.168.77.12",
            &b_public.to_base64(),
            &["10.202.0.0/16"],
        ),
    );
    let host = host().await;
    let state = tempfile::tempdir().expect("state dir");
    let (stop, task) = start(&server, &host, Arc::new(AlwaysLeader), &state).await;

    eventually(20, "the peer and its route", || {
        peer(&host, &b_public) && has_route(&host, "10.202.0.0/16")
    })
    .await;
    // The local Endpoint is published as Submariner names and labels it.
    let own = "cluster-a-submariner-cable-cluster-a-192-168-77-11";
    eventually(10, "the local Endpoint", || {
        server.get(ENDPOINTS, NS, own).is_some()
    })
    .await;
    let published = server.get(ENDPOINTS, NS, own).expect("published");
    assert_eq!(
        published["metadata"]["labels"]["submariner-io/clusterID"],
        "cluster-a"
    );
    assert_eq!(published["spec"]["hostname"], "node-a");
    assert_eq!(published["spec"]["backend"], "wireguard");

    // The Gateway object reports the connection; once a handshake happens it is connected.
    eventually(10, "the Gateway status with the connection", || {
        gateway_status(&server)
            .is_some_and(|s| s["connections"][0]["endpoint"]["cluster_id"] == "cluster-b")
    })
    .await;
    let status = gateway_status(&server).expect("status");
    assert_eq!(status["haStatus"], "active");
    assert_eq!(status["localEndpoint"]["cluster_id"], "cluster-a");
    assert_eq!(status["connections"][0]["usingIP"], "192.168.77.12");
    assert!(host.device.set_traffic(
        DEFAULT_DEVICE,
        &b_public,
        Some(SystemTime::now()),
        1000,
        2000
    ));
    eventually(
        10,
        "the connection to come up in the Gateway status",
        || gateway_status(&server).is_some_and(|s| s["connections"][0]["status"] == "connected"),
    )
    .await;

    // A bad Endpoint arriving meanwhile touches nothing (refused by admission).
    let mut impostor = endpoint_object(
        "cluster-c",
        "192.168.77.13",
        &remote_key().public_key().to_base64(),
        &["10.201.0.0/24"],
    );
    impostor["spec"]["cluster_id"] = serde_json::json!("cluster-a");
    server.insert(ENDPOINTS, NS, impostor);
    // The remote leaves: its peer and route go.
    server.remove(
        ENDPOINTS,
        NS,
        b_object["metadata"]["name"].as_str().expect("name"),
    );
    eventually(10, "the peer and route to go", || {
        !peer(&host, &b_public) && !has_route(&host, "10.202.0.0/16")
    })
    .await;
    assert!(
        !has_route(&host, "10.201.0.0/24"),
        "the impostor's subnet was never routed"
    );

    stop.send(()).expect("the gateway runs");
    task.await
        .expect("joins")
        .expect("the gateway stopped cleanly");
    assert!(
        server.get(GATEWAYS, NS, "node-a").is_none(),
        "the Gateway object is deleted on shutdown"
    );
    assert!(
        server.get(ENDPOINTS, NS, own).is_some(),
        "a restart is not a leave: the Endpoint stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_leads_when_the_lease_frees_and_again_after_losing_it() {
    let server = FakeApiServer::new();
    let b = remote_key();
    let b_public = b.public_key();
    server.insert(
        ENDPOINTS,
        NS,
        endpoint_object(
            "cluster-b",
            "192.168.77.12",
            &b_public.to_base64(),
            &["10.202.0.0/16"],
        ),
    );
    // Another gateway of cluster-a holds the lease (with a short duration) and renews it.
    let lease = |renew: u64| {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "submariner-gateway-lock"},
            "spec": {
                "holderIdentity": "node-x-submariner-gateway",
                "leaseDurationSeconds": 2,
                "acquireTime": "2026-01-01T00:00:00.000000Z",
                "renewTime": format!("2026-01-01T00:00:{:02}.000000Z", renew % 60),
                "leaseTransitions": 0
            }
        })
    };
    server.insert(LEASES, NS, lease(0));
    let timings = LeaseTimings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    let elector = Arc::new(LeaseElector::new(server.client(NS), &k8s_config(timings)));
    let host = host().await;
    let state = tempfile::tempdir().expect("state dir");
    let (stop, task) = start(&server, &host, elector, &state).await;
    let own = "cluster-a-submariner-cable-cluster-a-192-168-77-11";

    // Passive while the other renews: a Gateway object says so, nothing is published.
    for i in 1..=15u64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.insert(LEASES, NS, lease(i));
    }
    assert!(
        server.get(ENDPOINTS, NS, own).is_none(),
        "a passive gateway publishes nothing"
    );
    assert!(
        !peer(&host, &b_public),
        "a passive gateway changes nothing on the host"
    );
    assert_eq!(
        gateway_status(&server).expect("status")["haStatus"],
        "passive"
    );

    // The other stops renewing: this gateway leads, publishes and connects.
    eventually(20, "the takeover (published)", || {
        server.get(ENDPOINTS, NS, own).is_some()
    })
    .await;
    eventually(20, "the takeover (connected)", || peer(&host, &b_public)).await;
    eventually(10, "haStatus active", || {
        gateway_status(&server).is_some_and(|s| s["haStatus"] == "active")
    })
    .await;

    // It loses the lease (its Lease writes fail past the renew deadline) and a new leader
    // removes its Endpoint; the data path stays.
    server.fail(
        FaultMatch {
            resource: Some(LEASES.to_owned()),
            ..FaultMatch::default()
        },
        100_000,
        FaultKind::Status(503),
    );
    eventually(20, "stepping down", || {
        gateway_status(&server).is_some_and(|s| s["haStatus"] == "passive")
    })
    .await;
    server.remove(ENDPOINTS, NS, own);
    assert!(
        peer(&host, &b_public),
        "losing the lease does not tear down the data path"
    );
    // Leading again: published again.
    server.heal();
    eventually(20, "publishing after leading again", || {
        server.get(ENDPOINTS, NS, own).is_some()
    })
    .await;

    stop.send(()).expect("the gateway runs");
    task.await
        .expect("joins")
        .expect("the gateway stopped cleanly");
    let spec = server
        .get(LEASES, NS, "submariner-gateway-lock")
        .expect("lease")["spec"]
        .clone();
    assert_eq!(spec["holderIdentity"], "", "released on shutdown");
}
