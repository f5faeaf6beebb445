//! The broker syncer and publishing, with a local and a broker cluster, each an in-memory API
//! server behind kube's client.

mod common;

use std::time::Duration;

use common::{config, endpoint, eventually, forward, name_of, recv, BROKER_NS, NS};
use serde_json::{json, Value};
use wgcable_broker::{EndpointSource, ObjectKey, Role, SourceEvent, SourceHealth};
use wgcable_k8s::testing::{FakeApiServer, FaultKind, FaultMatch, CLUSTERS, ENDPOINTS};
use wgcable_k8s::KubernetesSource;

const OWN: &str = "cluster-a-submariner-cable-cluster-a-172-18-0-10";

fn local_endpoint() -> wgcable_api::Endpoint {
    wgcable_api::Endpoint::new(wgcable_api::EndpointSpec {
        cluster_id: "cluster-a".into(),
        cable_name: "submariner-cable-cluster-a-172-18-0-10".into(),
        hostname: "node-a".into(),
        subnets: vec!["10.42.0.0/16".into(), "10.43.0.0/16".into()],
        private_ip: "172.18.0.10".into(),
        backend: "wireguard".into(),
        backend_config: [
            (
                "publicKey".to_owned(),
                "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=".to_owned(),
            ),
            ("udp-port".to_owned(), "4500".to_owned()),
        ]
        .into(),
        ..Default::default()
    })
}

fn cluster_object(cluster: &str) -> Value {
    json!({
        "apiVersion": "submariner.io/v1",
        "kind": "Cluster",
        "metadata": {"name": cluster, "labels": {"submariner-io/clusterID": cluster}},
        "spec": {
            "cluster_id": cluster,
            "color_codes": ["blue"],
            "cluster_cidr": ["10.2.0.0/16"],
            "service_cidr": ["10.3.0.0/16"],
            "global_cidr": []
        }
    })
}

struct Clusters {
    local: FakeApiServer,
    broker: FakeApiServer,
}

impl Clusters {
    fn new() -> Self {
        Clusters {
            local: FakeApiServer::new(),
            broker: FakeApiServer::new(),
        }
    }

    fn source(&self) -> KubernetesSource {
        KubernetesSource::new(
            self.local.client(NS),
            Some((self.broker.client(BROKER_NS), BROKER_NS.to_owned())),
            config("cluster-a", "node-a"),
        )
    }
}

fn label(object: &Value, key: &str) -> Option<String> {
    object["metadata"]["labels"][key]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(start_paused = true)]
async fn the_leader_exports_its_objects_imports_foreign_ones_and_removes_stale_ones() {
    let c = Clusters::new();
    let b = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-b", 11, Some("cluster-b")),
    );
    c.broker
        .insert(CLUSTERS, BROKER_NS, cluster_object("cluster-b"));
    // Ours in the broker under an old cable name: deleted.
    let stale_broker = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-a", 9, Some("cluster-a")),
    );
    // Labelled cluster-c but claiming to be us: never imported, and not ours to delete.
    let mut impostor = endpoint("cluster-c", 12, Some("cluster-c"));
    impostor["spec"]["cluster_id"] = json!("cluster-a");
    let impostor = c.broker.insert(ENDPOINTS, BROKER_NS, impostor);
    // Unlabelled in the broker: nobody's to import.
    let unlabelled = c
        .broker
        .insert(ENDPOINTS, BROKER_NS, endpoint("cluster-d", 13, None));
    // A stale Endpoint of ours in the local namespace, from another node: deleted.
    let stale_local = c
        .local
        .insert(ENDPOINTS, NS, endpoint("cluster-a", 8, Some("cluster-a")));

    let source = c.source();
    let mut events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");

    eventually(60, "the import", || {
        c.local.get(ENDPOINTS, NS, &name_of(&b)).is_some()
            && c.local.get(CLUSTERS, NS, "cluster-b").is_some()
    })
    .await;
    eventually(60, "the stale objects to go", || {
        c.local.get(ENDPOINTS, NS, &name_of(&stale_local)).is_none()
            && c.broker
                .get(ENDPOINTS, BROKER_NS, &name_of(&stale_broker))
                .is_none()
    })
    .await;

    // Local namespace: ours, and cluster-b's copy with its labels and spec as published.
    let mut local_names = c.local.names(ENDPOINTS, NS);
    local_names.sort();
    assert_eq!(local_names, [OWN.to_owned(), name_of(&b)]);
    let copy = c.local.get(ENDPOINTS, NS, &name_of(&b)).expect("imported");
    assert_eq!(copy["spec"], b["spec"]);
    assert_eq!(
        label(&copy, "submariner-io/clusterID").as_deref(),
        Some("cluster-b")
    );
    let own = c.local.get(ENDPOINTS, NS, OWN).expect("published");
    assert_eq!(
        label(&own, "submariner-io/clusterID").as_deref(),
        Some("cluster-a")
    );
    assert_eq!(own["spec"]["hostname"], "node-a");
    let own_cluster = c
        .local
        .get(CLUSTERS, NS, "cluster-a")
        .expect("Cluster published");
    assert_eq!(own_cluster["spec"]["color_codes"], json!(["blue"]));
    assert_eq!(own_cluster["spec"]["cluster_cidr"], json!(["10.42.0.0/16"]));

    // Broker: ours, labelled; the impostor and the unlabelled one untouched.
    eventually(60, "the export", || {
        c.broker.get(CLUSTERS, BROKER_NS, "cluster-a").is_some()
    })
    .await;
    let exported = c.broker.get(ENDPOINTS, BROKER_NS, OWN).expect("exported");
    assert_eq!(exported["spec"], own["spec"]);
    assert_eq!(
        label(&exported, "submariner-io/clusterID").as_deref(),
        Some("cluster-a")
    );
    assert_eq!(
        label(&exported, "submariner-io/originatingNamespace").as_deref(),
        Some(NS)
    );
    assert!(c
        .broker
        .get(ENDPOINTS, BROKER_NS, &name_of(&impostor))
        .is_some());
    assert!(c
        .broker
        .get(ENDPOINTS, BROKER_NS, &name_of(&unlabelled))
        .is_some());

    // The imported Endpoint reaches the gateway through the local watch.
    let want = ObjectKey(format!("{NS}/{}", name_of(&b)));
    loop {
        match recv(&mut events, 60, "the imported endpoint").await {
            SourceEvent::Apply(raw) if raw.key == want => {
                assert_eq!(raw.bound_cluster.as_deref(), Some("cluster-b"));
                break;
            }
            SourceEvent::Snapshot(objects) if objects.iter().any(|o| o.key == want) => break,
            _ => continue,
        }
    }

    // cluster-b leaves the broker: its copy leaves the local namespace, and the gateway hears.
    c.broker.remove(ENDPOINTS, BROKER_NS, &name_of(&b));
    loop {
        match recv(&mut events, 60, "the withdrawal").await {
            SourceEvent::Delete(key) if key == want => break,
            _ => continue,
        }
    }
    assert!(c.local.get(ENDPOINTS, NS, &name_of(&b)).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_object_labelled_with_our_cluster_id_is_never_imported() {
    let c = Clusters::new();
    // Ours under another name in the broker would be deleted, not imported; one with a
    // foreign name pattern but our label is equally ours.
    let mut ours = endpoint("cluster-x", 20, Some("cluster-a"));
    ours["spec"]["cluster_id"] = json!("cluster-x");
    c.broker.insert(ENDPOINTS, BROKER_NS, ours.clone());
    let source = c.source();
    let _events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");
    eventually(60, "the export", || {
        c.broker.get(ENDPOINTS, BROKER_NS, OWN).is_some()
    })
    .await;
    eventually(60, "our stale object to go", || {
        c.broker
            .get(ENDPOINTS, BROKER_NS, &name_of(&ours))
            .is_none()
    })
    .await;
    assert_eq!(c.local.names(ENDPOINTS, NS), [OWN.to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn a_follower_writes_nothing_until_it_leads() {
    let c = Clusters::new();
    let b = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-b", 11, Some("cluster-b")),
    );
    let source = c.source();
    source
        .set_role(&Role::Follower {
            leader: Some("node-b-submariner-gateway".into()),
        })
        .await;
    let _events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        c.local.names(ENDPOINTS, NS).is_empty(),
        "a passive gateway publishes nothing"
    );
    assert_eq!(c.broker.writes(ENDPOINTS), 0);
    assert_eq!(c.local.writes(ENDPOINTS), 0);

    source.set_role(&Role::Leader).await;
    eventually(60, "syncing after the takeover", || {
        c.local.get(ENDPOINTS, NS, OWN).is_some()
            && c.local.get(ENDPOINTS, NS, &name_of(&b)).is_some()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn publishing_what_is_already_there_writes_nothing() {
    let c = Clusters::new();
    let source = c.source();
    let _events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");
    eventually(60, "the export", || {
        c.broker.get(ENDPOINTS, BROKER_NS, OWN).is_some()
            && c.broker.get(CLUSTERS, BROKER_NS, "cluster-a").is_some()
    })
    .await;
    // Let the syncer settle, then count: further publishes and resync passes are no-ops.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (local_writes, broker_writes) = (
        c.local.writes(ENDPOINTS) + c.local.writes(CLUSTERS),
        c.broker.writes(ENDPOINTS) + c.broker.writes(CLUSTERS),
    );
    source
        .publish(&local_endpoint())
        .await
        .expect("publish again");
    tokio::time::sleep(Duration::from_secs(95)).await;
    assert_eq!(
        c.local.writes(ENDPOINTS) + c.local.writes(CLUSTERS),
        local_writes
    );
    assert_eq!(
        c.broker.writes(ENDPOINTS) + c.broker.writes(CLUSTERS),
        broker_writes
    );

    // A real change is written everywhere.
    let mut changed = local_endpoint();
    changed.spec.subnets.push("10.44.0.0/16".into());
    source.publish(&changed).await.expect("publish a change");
    eventually(60, "the change in the broker", || {
        c.broker.get(ENDPOINTS, BROKER_NS, OWN).is_some_and(|e| {
            e["spec"]["subnets"]
                .as_array()
                .is_some_and(|s| s.len() == 3)
        })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_is_reported_and_removes_nothing() {
    let c = Clusters::new();
    let b = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-b", 11, Some("cluster-b")),
    );
    let source = c.source();
    let mut events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");
    eventually(60, "the import", || {
        c.local.get(ENDPOINTS, NS, &name_of(&b)).is_some()
    })
    .await;
    eventually(60, "the broker watches", || {
        c.broker.open_watches(ENDPOINTS) == 1
    })
    .await;

    // The broker goes away for a while.
    c.broker
        .fail(FaultMatch::default(), 6, FaultKind::Unreachable);
    c.broker.close_watches();
    loop {
        match recv(&mut events, 60, "the outage report").await {
            SourceEvent::Health(SourceHealth::Unhealthy(message)) => {
                assert!(message.contains("broker sync"), "{message}");
                break;
            }
            _ => continue,
        }
    }
    assert!(
        c.local.get(ENDPOINTS, NS, &name_of(&b)).is_some(),
        "the copy stays"
    );
    loop {
        match recv(&mut events, 120, "recovery").await {
            SourceEvent::Health(SourceHealth::Healthy) => break,
            _ => continue,
        }
    }
    assert!(c.local.get(ENDPOINTS, NS, &name_of(&b)).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_thousand_broker_endpoints_are_imported_and_reach_the_gateway() {
    let c = Clusters::new();
    for i in 0..1000u32 {
        let cluster = format!("c{i:04}");
        let mut object = endpoint(&cluster, (i % 250) as u8, Some(&cluster));
        object["metadata"]["name"] = json!(format!("{cluster}-cable"));
        c.broker.insert(ENDPOINTS, BROKER_NS, object);
    }
    let source = c.source();
    let mut events = forward(source.watch());
    source.publish(&local_endpoint()).await.expect("publish");
    eventually(600, "1,000 imports", || {
        c.local.names(ENDPOINTS, NS).len() == 1001
    })
    .await;
    // Every copy reaches the gateway through the local watch, once.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 1000 {
        match recv(&mut events, 600, "the imported endpoints").await {
            SourceEvent::Apply(raw) => {
                seen.insert(raw.key);
            }
            SourceEvent::Snapshot(objects) => seen.extend(objects.into_iter().map(|o| o.key)),
            _ => {}
        }
    }
    // One create per import and per own object, nothing rewritten afterwards.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(c.local.writes(ENDPOINTS), 1001);
}

/// `wgcable leave`: every Endpoint labelled with our cluster id goes, in the local and the
/// broker namespace (the leader's, another node's stale one, the broker copies); nobody
/// else's, and not an impostor labelled as another cluster.
#[tokio::test(start_paused = true)]
async fn withdraw_deletes_every_endpoint_of_the_cluster_in_both_namespaces_and_nothing_else() {
    let c = Clusters::new();
    let ours_local = [
        c.local
            .insert(ENDPOINTS, NS, endpoint("cluster-a", 10, Some("cluster-a"))),
        c.local
            .insert(ENDPOINTS, NS, endpoint("cluster-a", 8, Some("cluster-a"))),
    ];
    let ours_broker = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-a", 10, Some("cluster-a")),
    );
    let b_local = c
        .local
        .insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let b_broker = c.broker.insert(
        ENDPOINTS,
        BROKER_NS,
        endpoint("cluster-b", 11, Some("cluster-b")),
    );
    let mut impostor = endpoint("cluster-c", 12, Some("cluster-c"));
    impostor["spec"]["cluster_id"] = json!("cluster-a");
    let impostor = c.broker.insert(ENDPOINTS, BROKER_NS, impostor);

    // What `wgcable leave` passes: the cluster id only.
    let mut local = wgcable_api::Endpoint::new(Default::default());
    local.spec.cluster_id = "cluster-a".into();
    c.source().withdraw(&local).await.expect("withdraw");

    assert_eq!(c.local.names(ENDPOINTS, NS), [name_of(&b_local)]);
    let mut left = c.broker.names(ENDPOINTS, BROKER_NS);
    left.sort();
    let mut want = vec![name_of(&b_broker), name_of(&impostor)];
    want.sort();
    assert_eq!(left, want);
    for gone in ours_local.iter().chain([&ours_broker]) {
        assert!(c.local.get(ENDPOINTS, NS, &name_of(gone)).is_none());
        assert!(c.broker.get(ENDPOINTS, BROKER_NS, &name_of(gone)).is_none());
    }
    // Withdrawing again finds nothing and succeeds.
    c.source().withdraw(&local).await.expect("withdraw again");
}
