//! Shared helpers of the wgcable-k8s tests: configurations, objects shaped as a real API
//! server returns them, and waiting for stream items under paused time.

#![allow(dead_code)] // Each test binary uses a different part.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use serde_json::{json, Value};
use wgcable_k8s::{KubernetesConfig, LeaseTimings, LocalAccess};

pub const NS: &str = "submariner-operator";
pub const BROKER_NS: &str = "submariner-k8s-broker";

/// The configuration of cluster `cluster`'s gateway on node `node`.
pub fn config(cluster: &str, node: &str) -> KubernetesConfig {
    KubernetesConfig {
        namespace: NS.to_owned(),
        cluster_id: cluster.to_owned(),
        node_name: node.to_owned(),
        pod_name: Some(format!("submariner-gateway-{node}")),
        hostname: node.to_owned(),
        cluster_cidrs: vec!["10.42.0.0/16".to_owned()],
        service_cidrs: vec!["10.43.0.0/16".to_owned()],
        global_cidrs: Vec::new(),
        local: LocalAccess::Infer,
        broker: None,
        lease: LeaseTimings::default(),
        resync_interval: Duration::from_secs(3600),
        version: "wgcable-test".to_owned(),
    }
}

/// Cluster `cluster`'s Endpoint as another gateway (Go or wgcable) publishes it, labelled with
/// `label` (normally its own cluster id; `None` leaves the label out). The server adds uid,
/// resourceVersion, creationTimestamp and generation.
pub fn endpoint(cluster: &str, last_octet: u8, label: Option<&str>) -> Value {
    let ip = format!("172.18.0.{last_octet}");
    let cable = format!("submariner-cable-{cluster}-{}", ip.replace('.', "-"));
    let mut object = json!({
        "apiVersion": "submariner.io/v1",
        "kind": "Endpoint",
        "metadata": {
            "name": format!("{cluster}-{cable}"),
            "managedFields": [{
                "apiVersion": "submariner.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {".": {}, "f:backend": {}}},
                "manager": "submariner-gateway",
                "operation": "Update",
                "time": "2026-01-01T00:00:00Z"
            }]
        },
        "spec": {
            "backend": "wireguard",
            "backend_config": {
                "interface-name": "submariner",
                "natt-discovery-port": "4490",
                "preferred-server": "false",
                "publicKey": "ahDa8lFK4AxFMbLk685z3xh5xjR+z3/fXDaWXd/onEw=",
                "udp-port": "4500"
            },
            "cable_name": cable,
            "cluster_id": cluster,
            "healthCheckIP": format!("10.{last_octet}.0.1"),
            "hostname": format!("{cluster}-worker"),
            "nat_enabled": false,
            "private_ip": ip,
            "public_ip": "",
            "subnets": [format!("10.{last_octet}.0.0/16")]
        }
    });
    if let Some(label) = label {
        object["metadata"]["labels"] = json!({
            "submariner-io/clusterID": label,
            "submariner-io/originatingNamespace": NS,
        });
    }
    object
}

pub fn name_of(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap_or("").to_owned()
}

/// The next item, or a failure after `secs` seconds of (paused, auto-advancing) time.
pub async fn next<S: Stream + Unpin>(stream: &mut S, secs: u64, what: &str) -> S::Item {
    match tokio::time::timeout(Duration::from_secs(secs), stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {secs} s"),
    }
}

/// Waits (in paused time) until `condition` holds, polling every 100 ms, for at most `secs`.
pub async fn eventually(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("{what} did not happen within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `stream` on a task of its own (as the gateway does) and hands its items over.
pub fn forward<T: Send + 'static>(
    mut stream: futures::stream::BoxStream<'static, T>,
) -> tokio::sync::mpsc::UnboundedReceiver<T> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next forwarded item, or a failure after `secs` seconds of paused time.
pub async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, secs: u64, what: &str) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), rx.recv()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {secs} s"),
    }
}
