//! The Gateway status writer against the in-memory API server: the object `subctl show
//! connections` reads, stale Gateways, shutdown.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{config, NS};
use serde_json::json;
use wgcable_api::{Connection, ConnectionStatus, Endpoint, EndpointSpec, LatencyRtt};
use wgcable_broker::{EndpointSource, GatewayReport, Role};
use wgcable_k8s::testing::{FakeApiServer, FaultKind, FaultMatch, GATEWAYS};
use wgcable_k8s::KubernetesSource;

fn spec(cluster: &str, host: &str, ip: &str) -> EndpointSpec {
    EndpointSpec {
        cluster_id: cluster.into(),
        cable_name: format!("submariner-cable-{cluster}-{}", ip.replace('.', "-")),
        hostname: host.into(),
        subnets: vec!["10.42.0.0/16".into()],
        private_ip: ip.into(),
        backend: "wireguard".into(),
        backend_config: [(
            "publicKey".to_owned(),
            "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=".to_owned(),
        )]
        .into(),
        ..Default::default()
    }
}

fn report(role: Role, at: u64) -> GatewayReport {
    let mut connection = Connection::new(
        spec("cluster-b", "cluster-b-worker", "172.18.0.11"),
        "172.18.0.11",
        false,
    );
    connection.set_status(ConnectionStatus::Connected, "");
    connection.latency_rtt = Some(LatencyRtt {
        last: "1.2ms".into(),
        min: "1.1ms".into(),
        average: "1.3ms".into(),
        max: "1.9ms".into(),
        std_dev: "0.2ms".into(),
    });
    GatewayReport {
        local: Endpoint::new(spec("cluster-a", "node-a", "172.18.0.10")),
        role,
        connections: vec![connection],
        status_failure: String::new(),
        reported_at: UNIX_EPOCH + Duration::from_secs(1_767_225_600 + at),
    }
}

fn source(server: &FakeApiServer) -> KubernetesSource {
    KubernetesSource::new(server.client(NS), None, config("cluster-a", "node-a"))
}

#[tokio::test(start_paused = true)]
async fn the_gateway_object_after_a_connection_came_up() {
    let server = FakeApiServer::new();
    let source = source(&server);
    source
        .report(&report(Role::Leader, 0))
        .await
        .expect("report");

    let gateway = server
        .get(GATEWAYS, NS, "node-a")
        .expect("the Gateway is named after the node");
    assert_eq!(gateway["apiVersion"], "submariner.io/v1");
    assert_eq!(gateway["kind"], "Gateway");
    assert_eq!(
        gateway["metadata"]["annotations"]["update-timestamp"],
        "1767225600"
    );
    let status = &gateway["status"];
    assert_eq!(status["version"], "wgcable-test");
    assert_eq!(status["haStatus"], "active");
    assert_eq!(status["statusFailure"], "");
    assert_eq!(status["localEndpoint"]["hostname"], "node-a");
    assert_eq!(status["localEndpoint"]["cluster_id"], "cluster-a");
    assert_eq!(status["localEndpoint"]["backend"], "wireguard");
    assert_eq!(
        status["connections"],
        json!([{
            "status": "connected",
            "statusMessage": "",
            "endpoint": {
                "cluster_id": "cluster-b",
                "cable_name": "submariner-cable-cluster-b-172-18-0-11",
                "hostname": "cluster-b-worker",
                "subnets": ["10.42.0.0/16"],
                "private_ip": "172.18.0.11",
                "public_ip": "",
                "nat_enabled": false,
                "backend": "wireguard",
                "backend_config": {"publicKey": "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo="}
            },
            "usingIP": "172.18.0.11",
            "latencyRTT": {"last": "1.2ms", "min": "1.1ms", "average": "1.3ms", "max": "1.9ms", "stdDev": "0.2ms"}
        }])
    );

    // The next report updates in place: same object, new timestamp, passive now.
    let mut next = report(Role::Follower { leader: None }, 5);
    next.connections.clear();
    next.status_failure = "the cable driver failed".into();
    source.report(&next).await.expect("report");
    let gateway = server.get(GATEWAYS, NS, "node-a").expect("still there");
    assert_eq!(
        gateway["metadata"]["annotations"]["update-timestamp"],
        "1767225605"
    );
    assert_eq!(gateway["status"]["haStatus"], "passive");
    assert_eq!(
        gateway["status"]["connections"],
        json!([]),
        "connections is [] rather than absent"
    );
    assert_eq!(
        gateway["status"]["statusFailure"],
        "the cable driver failed"
    );
    assert_eq!(server.names(GATEWAYS, NS), ["node-a"]);
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_write_is_retried() {
    let server = FakeApiServer::new();
    let source = source(&server);
    source
        .report(&report(Role::Leader, 0))
        .await
        .expect("first report");
    server.fail(
        FaultMatch {
            method: Some(http::Method::PUT),
            resource: Some(GATEWAYS.to_owned()),
            ..FaultMatch::default()
        },
        1,
        FaultKind::Status(409),
    );
    source
        .report(&report(Role::Leader, 5))
        .await
        .expect("retried after the conflict");
    let gateway = server.get(GATEWAYS, NS, "node-a").expect("gateway");
    assert_eq!(
        gateway["metadata"]["annotations"]["update-timestamp"],
        "1767225605"
    );
}

#[tokio::test(start_paused = true)]
async fn the_active_gateway_deletes_stale_gateways_and_its_own_on_shutdown() {
    let server = FakeApiServer::new();
    let gateway = |name: &str, timestamp: Option<&str>| {
        let mut g = json!({
            "apiVersion": "submariner.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name},
            "status": {"version": "v0.19.0", "haStatus": "passive", "localEndpoint": {}, "statusFailure": "", "connections": []}
        });
        if let Some(t) = timestamp {
            g["metadata"]["annotations"] = json!({"update-timestamp": t});
        }
        g
    };
    // Report time is 1767225600 + 100.
    server.insert(GATEWAYS, NS, gateway("node-fresh", Some("1767225690")));
    server.insert(GATEWAYS, NS, gateway("node-stale", Some("1767225685")));
    server.insert(GATEWAYS, NS, gateway("node-garbled", Some("yesterday")));
    server.insert(GATEWAYS, NS, gateway("node-unstamped", None));

    let source = source(&server);
    // A passive gateway only writes its own.
    source
        .report(&report(Role::Follower { leader: None }, 100))
        .await
        .expect("report");
    assert_eq!(server.names(GATEWAYS, NS).len(), 5);
    // The active one cleans up: 15 s or older, unreadable or missing timestamps.
    source
        .report(&report(Role::Leader, 100))
        .await
        .expect("report");
    let mut names = server.names(GATEWAYS, NS);
    names.sort();
    assert_eq!(names, ["node-a", "node-fresh"]);

    source.shutdown().await;
    assert_eq!(server.names(GATEWAYS, NS), ["node-fresh"]);
}
