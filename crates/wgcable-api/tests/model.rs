//! Wire-format tests: field names exactly as Submariner's CRD JSON, parsed values of the
//! realistic testdata, and the leniency Go-produced JSON needs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde_json::{json, Value};
use wgcable_api::{
    Connection, ConnectionStatus, Endpoint, EndpointSpec, LatencyRtt, ObjectMeta, API_VERSION,
};

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn full_spec() -> EndpointSpec {
    let mut spec = EndpointSpec {
        cluster_id: "cluster-b".into(),
        cable_name: "submariner-cable-cluster-b-172-18-0-9".into(),
        health_check_ip: "10.131.0.1".into(),
        hostname: "cluster-b-worker".into(),
        subnets: vec!["10.2.0.0/16".into(), "fd00:2::/56".into()],
        private_ip: "172.18.0.9".into(),
        public_ip: "203.0.113.22".into(),
        nat_enabled: true,
        backend: "wireguard".into(),
        private_ips: vec!["172.18.0.9".into(), "fc00::9".into()],
        public_ips: vec!["203.0.113.22".into(), "2001:db8::22".into()],
        health_check_ips: vec!["10.131.0.1".into(), "fd00:131::1".into()],
        ..EndpointSpec::default()
    };
    spec.set_backend_config("publicKey", "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=");
    spec.set_backend_config("udp-port", "4500");
    spec
}

#[test]
fn endpoint_spec_uses_submariner_field_names() {
    let value = serde_json::to_value(full_spec()).expect("serializes");
    assert_eq!(
        keys(&value),
        set(&[
            "cluster_id",
            "cable_name",
            "healthCheckIP",
            "hostname",
            "subnets",
            "private_ip",
            "public_ip",
            "nat_enabled",
            "backend",
            "backend_config",
            "private_ips",
            "public_ips",
            "healthCheckIPs",
        ])
    );
    assert_eq!(
        value["healthCheckIPs"],
        json!(["10.131.0.1", "fd00:131::1"])
    );
    assert_eq!(value["backend_config"]["udp-port"], json!("4500"));

    // What Submariner writes for an empty spec: optional lists/maps left out, required
    // fields present even when empty.
    let value = serde_json::to_value(EndpointSpec::default()).expect("serializes");
    assert_eq!(
        keys(&value),
        set(&[
            "cluster_id",
            "cable_name",
            "hostname",
            "subnets",
            "private_ip",
            "public_ip",
            "nat_enabled",
            "backend",
        ])
    );
    assert_eq!(value["subnets"], json!([]));
}

#[test]
fn connection_uses_submariner_field_names() {
    let mut connection = Connection::new(full_spec(), "203.0.113.22", true);
    assert_eq!(connection.status, ConnectionStatus::None);
    connection.set_status(ConnectionStatus::Connected, "Rx=1024 Bytes, Tx=2048 Bytes");
    connection.latency_rtt = Some(LatencyRtt {
        last: "1.2ms".into(),
        min: "0.9ms".into(),
        average: "1.1ms".into(),
        max: "1.9ms".into(),
        std_dev: "0.2ms".into(),
    });
    let value = serde_json::to_value(&connection).expect("serializes");
    assert_eq!(
        keys(&value),
        set(&[
            "status",
            "statusMessage",
            "endpoint",
            "usingIP",
            "usingNAT",
            "latencyRTT"
        ])
    );
    assert_eq!(value["status"], json!("connected"));
    assert_eq!(value["usingNAT"], json!(true));
    assert_eq!(
        keys(&value["latencyRTT"]),
        set(&["last", "min", "average", "max", "stdDev"])
    );
    assert_eq!(value["endpoint"]["cluster_id"], json!("cluster-b"));
    let back: Connection = serde_json::from_value(value).expect("parses back");
    assert_eq!(back, connection);

    // Go's omitempty: no usingIP, usingNAT or latencyRTT when unset.
    let value = serde_json::to_value(Connection::default()).expect("serializes");
    assert_eq!(keys(&value), set(&["status", "statusMessage", "endpoint"]));
}

/// A connection as a Submariner Gateway's `status.connections` holds it.
#[test]
fn parses_submariner_gateway_connection_json() {
    let go_json = r#"{
        "endpoint": {
            "backend": "wireguard",
            "backend_config": {"natt-discovery-port": "4490", "preferred-server": "false",
                               "publicKey": "ahDa8lFK4AxFMbLk685z3xh5xjR+z3/fXDaWXd/onEw=",
                               "udp-port": "4500"},
            "cable_name": "submariner-cable-cluster1-172-18-0-8",
            "cluster_id": "cluster1",
            "healthCheckIP": "10.130.0.1",
            "hostname": "cluster1-worker",
            "nat_enabled": false,
            "private_ip": "172.18.0.8",
            "public_ip": "203.0.113.21",
            "subnets": ["100.1.0.0/16", "10.1.0.0/16"]
        },
        "latencyRTT": {"average": "1.035ms", "last": "1.167ms", "max": "2.1ms",
                       "min": "512µs", "stdDev": "292.8µs"},
        "status": "connected",
        "statusMessage": "Connected to 172.18.0.8:4500 - encryption alg=AES_GCM_16, keysize=128 rekey-time=13444",
        "usingIP": "172.18.0.8",
        "usingNAT": false
    }"#;
    let connection: Connection = serde_json::from_str(go_json).expect("parses");
    assert_eq!(connection.status, ConnectionStatus::Connected);
    assert_eq!(connection.using_ip, "172.18.0.8");
    assert!(!connection.using_nat);
    assert_eq!(
        connection.latency_rtt.as_ref().map(|l| l.std_dev.as_str()),
        Some("292.8µs")
    );
    assert_eq!(connection.endpoint.udp_port().expect("port"), Some(4500));
    // Everything except Go's explicit `"usingNAT": false` (omitempty) comes back as it was.
    let mut original: Value = serde_json::from_str(go_json).expect("json");
    original.as_object_mut().expect("object").remove("usingNAT");
    assert_eq!(
        serde_json::to_value(&connection).expect("serializes"),
        original
    );
}

#[test]
fn go_nulls_and_missing_fields_default() {
    let endpoint = Endpoint::from_json(
        r#"{"apiVersion": "submariner.io/v1", "kind": "Endpoint",
            "metadata": {"name": "x", "labels": null},
            "spec": {"cluster_id": "x", "subnets": null, "backend_config": null,
                     "private_ips": null, "hostname": null}}"#,
    )
    .expect("parses");
    assert_eq!(endpoint.spec.subnets, Vec::<String>::new());
    assert!(endpoint.spec.backend_config.is_empty());
    assert_eq!(endpoint.spec.hostname, "");
    assert!(endpoint.metadata.labels.is_empty());
    // Missing spec altogether.
    let endpoint =
        Endpoint::from_yaml("apiVersion: submariner.io/v1\nkind: Endpoint\n").expect("parses");
    assert_eq!(endpoint.spec, EndpointSpec::default());
    assert_eq!(endpoint.metadata, ObjectMeta::default());
}

#[test]
fn new_endpoint_round_trips_through_yaml_and_json() {
    let endpoint = Endpoint::new(full_spec());
    assert_eq!(endpoint.api_version, API_VERSION);
    assert_eq!(
        endpoint.name(),
        "cluster-b-submariner-cable-cluster-b-172-18-0-9"
    );
    let yaml = endpoint.to_yaml().expect("yaml");
    assert!(
        yaml.starts_with("apiVersion: submariner.io/v1\nkind: Endpoint\n"),
        "{yaml}"
    );
    assert_eq!(Endpoint::from_yaml(&yaml).expect("back"), endpoint);
    let json = endpoint.to_json().expect("json");
    assert_eq!(Endpoint::from_json(&json).expect("back"), endpoint);
}

#[test]
fn wrong_type_errors_are_clear() {
    let err = Endpoint::from_json(r#"{"apiVersion": "submariner.io/v1", "kind": "Gateway"}"#)
        .expect_err("not an Endpoint");
    assert_eq!(err.to_string(), "parsing Endpoint from JSON");
    assert_eq!(
        std::error::Error::source(&err)
            .expect("the parse error")
            .to_string(),
        "expected apiVersion submariner.io/v1 and kind Endpoint, found apiVersion \
         submariner.io/v1 and kind Gateway"
    );
    // A kind that is not a well-known name is not repeated.
    let err = Endpoint::from_json(r#"{"apiVersion": "submariner.io/v1", "kind": "s3cr3t"}"#)
        .expect_err("not an Endpoint");
    let source = std::error::Error::source(&err).expect("the parse error");
    assert!(source.to_string().ends_with("and another kind"), "{source}");
    let err = Endpoint::from_yaml("apiVersion: v1\nkind: List\nitems: []\n").expect_err("a list");
    let source = std::error::Error::source(&err).expect("the parse error");
    assert!(
        source.to_string().contains("Endpoint::list_from_yaml"),
        "{source}"
    );
    let err = Endpoint::from_yaml("spec: [").expect_err("broken yaml");
    assert!(
        err.to_string().starts_with("parsing Endpoint from YAML"),
        "{err}"
    );
    // Empty input and empty lists are no endpoints, not an error.
    assert!(Endpoint::list_from_yaml("").expect("empty").is_empty());
    assert!(
        Endpoint::list_from_yaml("apiVersion: v1\nkind: List\nitems: []\n")
            .expect("empty list")
            .is_empty()
    );
}

#[test]
fn realistic_files_have_the_expected_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/good");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("testdata");

    let endpoints =
        Endpoint::list_from_yaml(&read("kubectl-get-endpoints-wireguard.yaml")).expect("list");
    assert_eq!(endpoints.len(), 2);
    let remote = &endpoints[1];
    assert_eq!(
        remote.name(),
        "cluster2-submariner-cable-cluster2-172-18-0-11"
    );
    assert_eq!(
        remote.metadata.namespace.as_deref(),
        Some("submariner-operator")
    );
    assert_eq!(
        remote
            .metadata
            .labels
            .get("submariner-io/clusterID")
            .map(String::as_str),
        Some("cluster2")
    );
    assert_eq!(
        remote.metadata.other["uid"],
        json!("7d1e4c52-93b1-4f0e-b8a6-1c9c2e0d8f42")
    );
    assert_eq!(remote.metadata.other["resourceVersion"], json!("2210"));
    assert_eq!(remote.metadata.other["generation"], json!(2));
    let v = remote.spec.validate().expect("valid");
    assert_eq!(v.cluster_id, "cluster2");
    assert!(v.nat_enabled);
    assert_eq!(v.private_ips, vec![ip("172.18.0.11")]);
    assert_eq!(v.public_ips, vec![ip("198.51.100.34")]);
    assert_eq!(v.health_check_ips, vec![ip("10.131.0.1")]);
    assert_eq!(
        v.subnets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["100.2.0.0/16", "10.2.0.0/16"]
    );
    assert_eq!(v.udp_port, Some(4500));
    assert_eq!(
        v.public_key.map(|k| k.to_string()).as_deref(),
        Some("b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=")
    );
    assert_eq!(remote.spec.interface_name(), Some("submariner"));
    assert_eq!(remote.spec.public_ip_config(), Some("ipv4:198.51.100.34"));
    assert_eq!(remote.spec.natt_discovery_port().expect("port"), Some(4490));

    let dual = Endpoint::from_yaml(&read("dual-stack-endpoint.yaml")).expect("endpoint");
    let v = dual.spec.validate().expect("valid");
    assert_eq!(
        v.private_ips,
        vec![ip("172.18.0.5"), ip("fc00:f853:ccd:e793::5")]
    );
    assert_eq!(v.public_ips, vec![ip("203.0.113.50"), ip("2001:db8:50::5")]);
    // healthCheckIP repeats healthCheckIPs[0]: listed once.
    assert_eq!(
        v.health_check_ips,
        vec![ip("10.132.0.1"), ip("fd00:10:132::1")]
    );
    assert_eq!(
        v.subnets
            .iter()
            .filter(|n| matches!(n, ipnet::IpNet::V6(_)))
            .count(),
        2
    );
    assert!(dual.metadata.other.contains_key("annotations"));

    let v6 = Endpoint::list_from_yaml(&read("endpointlist-ipv6-only.yaml")).expect("list");
    assert_eq!(v6.len(), 1);
    assert_eq!(
        v6[0].api_version, API_VERSION,
        "filled in from the typed list"
    );
    let v = v6[0].spec.validate().expect("valid");
    assert_eq!(v.private_ips, vec![ip("fd00:18::7")]);
    assert!(v.public_ips.is_empty());
    assert_eq!(v.udp_port, Some(51820));

    let hand = Endpoint::list_from_yaml(&read("hand-written-minimal.yaml")).expect("list");
    assert_eq!(hand.len(), 2);
    assert_eq!(hand[0].spec.udp_port().expect("port"), Some(4500));
    assert_eq!(hand[1].spec.public_ip, "");
    assert_eq!(hand[1].spec.validate().expect("valid").public_key, None);
}
