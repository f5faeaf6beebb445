//! The whole path a gateway process takes: a kubeconfig file, kube's own HTTP client over a
//! real TCP connection, to the in-memory API server served on the loopback.

mod common;

use std::time::Duration;

use common::{config, endpoint, NS};
use futures::StreamExt as _;
use wgcable_broker::{EndpointSource, LeaderElector, Role, SourceEvent};
use wgcable_k8s::testing::{FakeApiServer, ENDPOINTS, LEASES};
use wgcable_k8s::LocalAccess;

#[tokio::test]
async fn connect_through_a_kubeconfig_over_http() {
    let server = FakeApiServer::new();
    let b = server.insert(ENDPOINTS, NS, endpoint("cluster-b", 11, Some("cluster-b")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio::spawn(server.clone().serve(listener));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, FakeApiServer::kubeconfig(&url, NS)).expect("write kubeconfig");
    let mut c = config("cluster-a", "node-a");
    c.local = LocalAccess::Kubeconfig(path);
    let (source, elector) = wgcable_k8s::connect(c).await.expect("connect");

    let mut events = source.watch();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open");
    match first {
        SourceEvent::Snapshot(objects) => {
            assert_eq!(objects.len(), 1);
            let value: serde_json::Value = serde_json::from_slice(&objects[0].bytes).expect("JSON");
            assert_eq!(value, b);
        }
        other => panic!("{other:?}"),
    }
    let mut roles = elector.roles();
    let mut leading = false;
    for _ in 0..2 {
        if tokio::time::timeout(Duration::from_secs(10), roles.next())
            .await
            .expect("a role")
            .expect("open")
            == Role::Leader
        {
            leading = true;
        }
    }
    assert!(leading, "the only gateway leads");
    assert_eq!(
        server
            .get(LEASES, NS, "submariner-gateway-lock")
            .expect("lease")["spec"]["holderIdentity"],
        "node-a-submariner-gateway"
    );
    // The watch streams over the connection: a new object arrives.
    let c = server.insert(ENDPOINTS, NS, endpoint("cluster-c", 12, Some("cluster-c")));
    let next = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open");
    match next {
        SourceEvent::Apply(raw) => assert!(raw
            .key
            .0
            .ends_with(c["metadata"]["name"].as_str().unwrap_or("?"))),
        other => panic!("{other:?}"),
    }
    serving.abort();
}
