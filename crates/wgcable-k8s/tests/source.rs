//! The Kubernetes endpoint source against the in-memory API server, through kube's client and
//! kube-runtime's watcher: snapshots, changes, bad input handed over intact, pages, watch
//! failures, 410 Gone and recovery.

mod common;

use std::time::Duration;

use common::{config, endpoint, eventually, forward, name_of, recv, NS};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use wgcable_broker::{EndpointSource, ObjectKey, RawObject, SourceEvent, SourceHealth};
use wgcable_k8s::testing::{FakeApiServer, FaultKind, FaultMatch, ENDPOINTS};
use wgcable_k8s::KubernetesSource;

fn source(server: &FakeApiServer) -> KubernetesSource {
    KubernetesSource::new(server.client(NS), None, config("cluster-a", "node-a"))
}

fn key(object: &Value) -> ObjectKey {
    ObjectKey(format!("{NS}/{}", name_of(object)))
}

fn parsed(raw: &RawObject) -> Value {
    serde_json::from_slice(&raw.bytes).expect("the source hands over JSON")
}

/// What the admission layer's bounded parser makes of a handed-over object.
fn admitted(raw: &RawObject) -> Result<wgcable_api::Endpoint, Box<wgcable_api::ParseError>> {
    wgcable_api::parse_endpoint(
        &raw.bytes,
        wgcable_api::Format::Json,
        &wgcable_api::ParseLimits::default(),
    )
    .map_err(Box::new)
}

type Events = UnboundedReceiver<SourceEvent>;

async fn snapshot(events: &mut Events) -> Vec<RawObject> {
    snapshot_within(events, 60).await
}

async fn snapshot_within(events: &mut Events, secs: u64) -> Vec<RawObject> {
    loop {
        match recv(events, secs, "a snapshot").await {
            SourceEvent::Snapshot(objects) => return objects,
            SourceEvent::Health(_) => continue,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn endpoints_already_present_arrive_as_one_snapshot_exactly_as_stored() {
    let server = FakeApiServer::new();
    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let c = server.insert(ENDPOINTS, NS, endpoint("cluster-c", 12, Some("cluster-c")));
    // Our own cluster's objects are not remote endpoints.
    server.insert(ENDPOINTS, NS, endpoint("cluster-a", 10, Some("cluster-a")));
    let mut events = forward(source(&server).watch());

    let objects = snapshot(&mut events).await;
    assert_eq!(
        objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        [key(&b), key(&c)]
    );
    let first = &objects[0];
    assert_eq!(
        parsed(first),
        b,
        "the bytes are the object as the server returned it"
    );
    assert_eq!(first.bound_cluster.as_deref(), Some("cluster-b"));
    assert_eq!(
        first.version.as_deref(),
        b["metadata"]["resourceVersion"].as_str()
    );
    // creationTimestamp 2026-01-01T00:00:00Z.
    assert_eq!(first.created, Some(1_767_225_600));
    assert_eq!(first.format, wgcable_broker::Format::Json);
    // What the API server returns (managedFields and all) is within the parser's limits.
    for raw in &objects {
        let endpoint = admitted(raw).expect("a real-shaped Endpoint parses");
        endpoint.spec.validate().expect("and validates");
    }
}

#[tokio::test(start_paused = true)]
async fn additions_updates_and_deletions_follow_the_snapshot() {
    let server = FakeApiServer::new();
    let mut events = forward(source(&server).watch());
    assert!(snapshot(&mut events).await.is_empty());

    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    match recv(&mut events, 60, "the addition").await {
        SourceEvent::Apply(raw) => assert_eq!(parsed(&raw), b),
        other => panic!("{other:?}"),
    }
    let mut changed = b.clone();
    changed["spec"]["subnets"] = json!(["10.99.0.0/16"]);
    let changed = server.insert(ENDPOINTS, NS, changed);
    match recv(&mut events, 60, "the update").await {
        SourceEvent::Apply(raw) => {
            assert_eq!(parsed(&raw)["spec"]["subnets"], json!(["10.99.0.0/16"]));
            assert_eq!(
                raw.version.as_deref(),
                changed["metadata"]["resourceVersion"].as_str()
            );
        }
        other => panic!("{other:?}"),
    }
    server.remove(ENDPOINTS, NS, &name_of(&b));
    assert_eq!(
        recv(&mut events, 60, "the deletion").await,
        SourceEvent::Delete(key(&b))
    );
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_handed_over_and_the_stream_goes_on() {
    let server = FakeApiServer::new();
    let mut events = forward(source(&server).watch());
    assert!(snapshot(&mut events).await.is_empty());

    // An impostor: labelled cluster-b, claiming to be us. Handed over bound to its label, for
    // admission to refuse.
    let mut impostor = endpoint("cluster-b", 11, Some("cluster-b"));
    impostor["spec"]["cluster_id"] = json!("cluster-a");
    server.insert(ENDPOINTS, NS, impostor.clone());
    match recv(&mut events, 60, "the impostor").await {
        SourceEvent::Apply(raw) => {
            assert_eq!(raw.bound_cluster.as_deref(), Some("cluster-b"));
            assert_eq!(parsed(&raw)["spec"]["cluster_id"], "cluster-a");
        }
        other => panic!("{other:?}"),
    }
    // Unlabelled and claiming to be us (a Go gateway's own Endpoint is unlabelled locally):
    // handed over unbound; admission refuses it for claiming the local cluster.
    let mut unlabelled = endpoint("cluster-x", 15, None);
    unlabelled["spec"]["cluster_id"] = json!("cluster-a");
    server.insert(ENDPOINTS, NS, unlabelled);
    match recv(&mut events, 60, "the unlabelled claimant").await {
        SourceEvent::Apply(raw) => {
            assert_eq!(raw.bound_cluster, None);
            assert_eq!(parsed(&raw)["spec"]["cluster_id"], "cluster-a");
        }
        other => panic!("{other:?}"),
    }
    // Malformed specs (a real server with a schema-less CRD stores anything).
    let mut malformed = endpoint("cluster-c", 12, Some("cluster-c"));
    malformed["spec"] = json!({"subnets": 5, "backend_config": ["x"], "private_ip": {"a": 1}});
    server.insert(ENDPOINTS, NS, malformed.clone());
    match recv(&mut events, 60, "the malformed object").await {
        SourceEvent::Apply(raw) => {
            assert_eq!(parsed(&raw)["spec"], malformed["spec"]);
            assert!(admitted(&raw).is_err(), "admission refuses it");
        }
        other => panic!("{other:?}"),
    }
    // A spec that is not even an object, and an unlabelled Endpoint.
    let mut scalar = endpoint("cluster-d", 13, None);
    scalar["spec"] = json!("garbage");
    server.insert(ENDPOINTS, NS, scalar.clone());
    match recv(&mut events, 60, "the scalar spec").await {
        SourceEvent::Apply(raw) => {
            assert_eq!(raw.bound_cluster, None);
            assert_eq!(parsed(&raw)["spec"], "garbage");
            assert!(admitted(&raw).is_err(), "admission refuses it");
        }
        other => panic!("{other:?}"),
    }
    // A watch line that is not JSON at all: the watcher reports it and reads on.
    server.inject_watch_line(ENDPOINTS, b"{not json");
    let e = server.insert(ENDPOINTS, NS, endpoint("cluster-e", 14, Some("cluster-e")));
    loop {
        match recv(&mut events, 60, "the next object after a broken line").await {
            SourceEvent::Health(_) => continue,
            SourceEvent::Apply(raw) => {
                assert_eq!(raw.key, key(&e));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_object_is_cut_just_past_the_limit() {
    let server = FakeApiServer::new();
    let mut big = endpoint("cluster-b", 11, Some("cluster-b"));
    big["spec"]["hostname"] = json!("x".repeat(wgcable_k8s::max_object_bytes() * 2));
    server.insert(ENDPOINTS, NS, big);
    let mut events = forward(source(&server).watch());
    let objects = snapshot(&mut events).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].bytes.len(), wgcable_k8s::max_object_bytes() + 1);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_endpoints_are_listed_in_pages_into_one_snapshot() {
    let server = FakeApiServer::new();
    for i in 0..1000u32 {
        let cluster = format!("c{i:04}");
        let mut object = endpoint(&cluster, (i % 250) as u8, Some(&cluster));
        object["metadata"]["name"] = json!(format!("{cluster}-cable"));
        server.insert(ENDPOINTS, NS, object);
    }
    let mut events = forward(source(&server).watch());
    let objects = snapshot(&mut events).await;
    assert_eq!(objects.len(), 1000);
    let lists: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/endpoints?") && !r.contains("watch=true"))
        .collect();
    assert_eq!(lists.len(), 2, "two pages of 500: {lists:?}");
    assert!(lists[1].contains("continue="), "{lists:?}");
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_closes_is_resumed_without_missing_or_repeating_events() {
    let server = FakeApiServer::new();
    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let mut events = forward(source(&server).watch());
    assert_eq!(snapshot(&mut events).await.len(), 1);

    // The watch ends (server restart, idle timeout); while the client reconnects, an object
    // is added. The new watch resumes from the last version seen: the addition arrives, the
    // object already known is not sent again, and there is no new snapshot.
    eventually(60, "the watch to open", || {
        server.open_watches(ENDPOINTS) == 1
    })
    .await;
    server.close_watches();
    let c = server.insert(ENDPOINTS, NS, endpoint("cluster-c", 12, Some("cluster-c")));
    match recv(&mut events, 60, "the addition made while reconnecting").await {
        SourceEvent::Apply(raw) => assert_eq!(raw.key, key(&c)),
        other => panic!("{other:?}"),
    }
    server.remove(ENDPOINTS, NS, &name_of(&b));
    assert_eq!(
        recv(&mut events, 60, "the deletion").await,
        SourceEvent::Delete(key(&b))
    );
    let watches = server
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert_eq!(watches, 2, "one watch, resumed once");
}

#[tokio::test(start_paused = true)]
async fn gone_means_relist_and_a_snapshot_that_shows_what_was_missed() {
    let server = FakeApiServer::new();
    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let mut events = forward(source(&server).watch());
    assert_eq!(snapshot(&mut events).await.len(), 1);

    // The watch breaks and cannot be reopened for a while; meanwhile b leaves, c arrives and
    // the server compacts its history, so resuming is impossible (410 Gone).
    server.fail(
        FaultMatch {
            watch: Some(true),
            ..FaultMatch::default()
        },
        2,
        FaultKind::Status(503),
    );
    eventually(60, "the watch to open", || {
        server.open_watches(ENDPOINTS) == 1
    })
    .await;
    server.close_watches();
    server.remove(ENDPOINTS, NS, &name_of(&b));
    let c = server.insert(ENDPOINTS, NS, endpoint("cluster-c", 12, Some("cluster-c")));
    server.compact();

    let mut saw_unhealthy = false;
    let objects = loop {
        match recv(&mut events, 120, "the relist").await {
            SourceEvent::Health(SourceHealth::Unhealthy(message)) => {
                assert!(message.contains("watching Endpoints"), "{message}");
                saw_unhealthy = true;
            }
            SourceEvent::Health(SourceHealth::Healthy) => {}
            SourceEvent::Snapshot(objects) => break objects,
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_unhealthy, "the failed watches were reported");
    assert_eq!(
        objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        [key(&c)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_watch_relists() {
    let server = FakeApiServer::new();
    server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let mut events = forward(source(&server).watch());
    assert_eq!(snapshot(&mut events).await.len(), 1);
    eventually(60, "the watch to open", || {
        server.open_watches(ENDPOINTS) == 1
    })
    .await;
    server.expire_watches();
    assert_eq!(snapshot(&mut events).await.len(), 1);
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.contains("limit=500"))
        .count();
    assert_eq!(lists, 2, "relisted once");
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_server_is_reported_and_recovered_from() {
    let server = FakeApiServer::new();
    server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    server.fail(FaultMatch::default(), 3, FaultKind::Unreachable);
    let mut events = forward(source(&server).watch());
    match recv(&mut events, 60, "the health report").await {
        SourceEvent::Health(SourceHealth::Unhealthy(message)) => {
            assert!(
                message.contains("watching Endpoints in namespace submariner-operator"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        recv(&mut events, 120, "recovery").await,
        SourceEvent::Health(SourceHealth::Healthy)
    );
    assert_eq!(snapshot(&mut events).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_becomes_ours_is_withdrawn() {
    let server = FakeApiServer::new();
    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let mut events = forward(source(&server).watch());
    assert_eq!(snapshot(&mut events).await.len(), 1);
    let mut relabelled = b.clone();
    relabelled["metadata"]["labels"]["submariner-io/clusterID"] = json!("cluster-a");
    server.insert(ENDPOINTS, NS, relabelled);
    assert_eq!(
        recv(&mut events, 60, "the withdrawal").await,
        SourceEvent::Delete(key(&b))
    );
}

#[tokio::test(start_paused = true)]
async fn the_watch_is_relisted_every_resync_interval() {
    let server = FakeApiServer::new();
    server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let mut c = config("cluster-a", "node-a");
    c.resync_interval = Duration::from_secs(120);
    let mut events = forward(KubernetesSource::new(server.client(NS), None, c).watch());
    assert_eq!(snapshot(&mut events).await.len(), 1);
    let before = tokio::time::Instant::now();
    assert_eq!(snapshot_within(&mut events, 200).await.len(), 1);
    let waited = tokio::time::Instant::now() - before;
    assert!(
        waited >= Duration::from_secs(119) && waited <= Duration::from_secs(121),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_shared_endpoint_fixture_is_a_valid_endpoint() {
    let server = FakeApiServer::new();
    server.insert(
        ENDPOINTS,
        NS,
        wgcable_k8s::testing::endpoint_object(
            "cluster-b",
            "192.168.77.12",
            "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=",
            &["10.202.0.0/16", "fd00:202::/64"],
        ),
    );
    let mut events = forward(source(&server).watch());
    let objects = snapshot(&mut events).await;
    assert_eq!(objects[0].bound_cluster.as_deref(), Some("cluster-b"));
    let endpoint = admitted(&objects[0]).expect("parses");
    endpoint.spec.validate().expect("validates");
}
