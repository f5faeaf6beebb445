//! The Kubernetes source feeding wgcable-broker's real admission layer: what the API server
//! holds is admitted or refused for the right reason, and our own object is recognised.

mod common;

use std::time::Duration;

use common::{config, endpoint, NS};
use futures::StreamExt as _;
use serde_json::json;
use wgcable_broker::admission::{AdmissionConfig, AdmissionRunner, AdmissionUpdate, LocalIdentity};
use wgcable_broker::debounce::Batch;
use wgcable_broker::{EndpointSource, SourceEvent};
use wgcable_k8s::testing::{endpoint_object, FakeApiServer, ENDPOINTS};
use wgcable_k8s::KubernetesSource;

const OUR_KEY: &str = "ahDa8lFK4AxFMbLk685z3xh5xjR+z3/fXDaWXd/onEw=";
const B_KEY: &str = "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=";

fn local() -> wgcable_api::Endpoint {
    let mut spec = wgcable_api::EndpointSpec {
        cluster_id: "cluster-a".into(),
        cable_name: "submariner-cable-cluster-a-192-168-77-11".into(),
        hostname: "node-a".into(),
        subnets: vec!["10.42.0.0/16".into()],
        private_ip: "192.168.77.11".into(),
        backend: "wireguard".into(),
        ..Default::default()
    };
    spec.set_backend_config("publicKey", OUR_KEY);
    spec.set_backend_config("udp-port", "4500");
    wgcable_api::Endpoint::new(spec)
}

async fn next_update(
    events: &mut futures::stream::BoxStream<'static, SourceEvent>,
    runner: &mut AdmissionRunner,
) -> AdmissionUpdate {
    let mut batch = Batch::default();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open");
        let health = matches!(event, SourceEvent::Health(_));
        batch.fold(event);
        if !health {
            return runner.apply(batch).await;
        }
    }
}

#[tokio::test]
async fn remote_endpoints_are_admitted_and_bad_ones_refused_for_the_right_reason() {
    let server = FakeApiServer::new();
    server.insert(
        ENDPOINTS,
        NS,
        endpoint_object("cluster-b", "192.168.77.12", B_KEY, &["10.202.0.0/16"]),
    );
    let mut impostor = endpoint("cluster-c", 13, Some("cluster-c"));
    impostor["spec"]["cluster_id"] = json!("cluster-a");
    server.insert(ENDPOINTS, NS, impostor);
    let mut unlabelled = endpoint("cluster-x", 14, None);
    unlabelled["spec"]["cluster_id"] = json!("cluster-a");
    server.insert(ENDPOINTS, NS, unlabelled);
    let mut malformed = endpoint("cluster-d", 15, Some("cluster-d"));
    malformed["spec"]["subnets"] = json!("not a list");
    server.insert(ENDPOINTS, NS, malformed);
    // A sibling of ours (another gateway node of cluster-a): not handed over at all.
    server.insert(ENDPOINTS, NS, endpoint("cluster-a", 9, Some("cluster-a")));

    let source = KubernetesSource::new(server.client(NS), None, config("cluster-a", "node-a"));
    let own_key = source
        .own_key(&local())
        .expect("derived from the local Endpoint");
    source.publish(&local()).await.expect("publish");
    assert_eq!(
        own_key.0,
        format!("{NS}/cluster-a-submariner-cable-cluster-a-192-168-77-11")
    );
    let identity = LocalIdentity {
        cluster_id: "cluster-a".into(),
        public_key: wgcable_api::PublicKey::from_base64(OUR_KEY).expect("key"),
        subnets: vec!["10.42.0.0/16".parse().expect("cidr")],
        underlay: vec!["192.168.77.11".parse().expect("ip")],
        own_key: Some(own_key.clone()),
        published: local(),
    };
    let mut runner = AdmissionRunner::in_memory(AdmissionConfig::default(), identity);
    let mut events = source.watch();

    let update = next_update(&mut events, &mut runner).await;
    assert!(update.snapshot);
    assert_eq!(
        update
            .upserted
            .iter()
            .map(|a| a.cluster_id.as_str())
            .collect::<Vec<_>>(),
        ["cluster-b"]
    );
    let mut reasons: Vec<&str> = update.refused.iter().map(|r| r.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{:#?}", update.refused);
    assert!(reasons.contains(&"impostor"), "{reasons:?}");
    assert!(reasons.contains(&"local_cluster"), "{reasons:?}");
    for refusal in &update.refused {
        assert!(
            !refusal.message.contains("not a list"),
            "no input values in messages"
        );
    }
    assert!(!update.republish, "our own object is what we published");

    // Someone edits our Endpoint behind our back: admission asks for a republish.
    let mut tampered = server
        .get(ENDPOINTS, NS, own_key.0.split('/').nth(1).expect("name"))
        .expect("ours");
    tampered["spec"]["subnets"] = json!(["10.99.0.0/16"]);
    server.insert(ENDPOINTS, NS, tampered);
    let update = next_update(&mut events, &mut runner).await;
    assert!(update.republish);
    source.publish(&local()).await.expect("republish");
    let ours = server
        .get(ENDPOINTS, NS, own_key.0.split('/').nth(1).expect("name"))
        .expect("ours");
    assert_eq!(ours["spec"]["subnets"], json!(["10.42.0.0/16"]));
}
