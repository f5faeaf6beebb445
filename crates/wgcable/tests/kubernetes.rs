//! `wgcable gateway --broker kubernetes`, the real binary, against wgcable-k8s's in-memory API
//! server served over HTTP on the loopback, in a fresh network and mount namespace with the
//! userspace WireGuard backend (root and `wireguard-go`; skipped visibly otherwise, a failure
//! under CI).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wgcable_k8s::testing::{endpoint_object, FakeApiServer, ENDPOINTS, GATEWAYS, LEASES};
use wgcable_keys::PrivateKey;
use wgcable_netlink::testing::{isolated, skip, Isolation};
use wgcable_netlink::{LinkKind, Netlink};

const NS: &str = "submariner-operator";
const OWN: &str = "cluster-a-submariner-cable-cluster-a-192-168-77-11";

/// Stops the gateway and removes what it left in the namespace, also when the test fails.
struct Running {
    child: Child,
    state: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(env!("CARGO_BIN_EXE_wgcable"))
            .args(["cleanup", "--backend", "userspace"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = &self.state;
    }
}

async fn until(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn gateway_broker_kubernetes_runs_against_the_in_memory_api() {
    if std::process::Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            "gateway_broker_kubernetes_runs_against_the_in_memory_api",
            "wireguard-go is not installed (apt-get install wireguard-go)",
        );
        return;
    }
    isolated(
        "gateway_broker_kubernetes_runs_against_the_in_memory_api",
        Isolation::with_run_wireguard(),
        |nl| async move {
            // The underlay: this gateway's private IP on a link of its own.
            // (A veth pair: some kernels have no dummy links.)
            let eth0 = nl
                .link_add(
                    "eth0",
                    &LinkKind::Veth {
                        peer: "eth0-peer".into(),
                    },
                )
                .await
                .expect("eth0");
            if let Some(peer) = nl.link_get("eth0-peer").await.expect("peer") {
                nl.link_set_up(peer.index, true).await.expect("peer up");
            }
            nl.addr_add(eth0.index, "192.168.77.11/24".parse().expect("cidr"))
                .await
                .expect("addr");
            nl.link_set_up(eth0.index, true).await.expect("up");

            let server = FakeApiServer::new();
            let remote = PrivateKey::generate().public_key();
            server.insert(
                ENDPOINTS,
                NS,
                endpoint_object(
                    "cluster-b",
                    "192.168.77.12",
                    &remote.to_base64(),
                    &["10.202.0.0/16"],
                ),
            );
            let (url, serving) = server.serve_on_loopback().await.expect("serve");
            let dir = tempfile::tempdir().expect("tempdir");
            let kubeconfig = dir.path().join("kubeconfig");
            std::fs::write(&kubeconfig, FakeApiServer::kubeconfig(&url, NS)).expect("kubeconfig");
            let state = tempfile::tempdir().expect("state dir");

            let child = Command::new(env!("CARGO_BIN_EXE_wgcable"))
                .args(["gateway", "--broker", "kubernetes", "--kubeconfig"])
                .arg(&kubeconfig)
                .args([
                    "--cluster-id",
                    "cluster-a",
                    "--subnets",
                    "10.201.0.0/16",
                    "--private-ip",
                    "192.168.77.11",
                    "--hostname",
                    "node-a",
                    "--namespace",
                    NS,
                    "--backend",
                    "userspace",
                    "--psk",
                    "a pre-shared key for this test only",
                    "--metrics-addr",
                    "127.0.0.1:0",
                    "--status-interval",
                    "200ms",
                    "--health-check",
                    "false",
                    "--state-dir",
                ])
                .arg(state.path())
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env("WGCABLE_LOG", "info")
                .stdout(Stdio::null())
                .spawn()
                .expect("start wgcable");
            let mut running = Running { child, state };

            // It leads (the only gateway), publishes, connects and reports.
            until(60, "the local Endpoint", || {
                server.get(ENDPOINTS, NS, OWN).is_some()
            })
            .await;
            until(30, "the Gateway status with the connection", || {
                server.get(GATEWAYS, NS, "node-a").is_some_and(|g| {
                    g["status"]["haStatus"] == "active"
                        && g["status"]["connections"][0]["endpoint"]["cluster_id"] == "cluster-b"
                })
            })
            .await;
            let lease = server
                .get(LEASES, NS, "submariner-gateway-lock")
                .expect("the Lease");
            assert!(
                lease["spec"]["holderIdentity"]
                    .as_str()
                    .is_some_and(|h| h.ends_with("-submariner-gateway")),
                "{lease}"
            );
            // The kernel side: the remote's subnet is routed through the device.
            let routes = nl.route_list(150).await.expect("routes");
            assert!(
                routes
                    .iter()
                    .any(|r| r.dst == "10.202.0.0/16".parse().expect("cidr")),
                "{routes:?}"
            );

            // SIGTERM: a clean stop that deletes the Gateway object and releases the Lease.
            let pid = nix::unistd::Pid::from_raw(running.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(status) = running.child.try_wait().expect("wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the gateway did not stop within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(status.success(), "exit status {status}");
            assert!(
                server.get(GATEWAYS, NS, "node-a").is_none(),
                "Gateway deleted on shutdown"
            );
            let lease = server
                .get(LEASES, NS, "submariner-gateway-lock")
                .expect("the Lease");
            assert_eq!(lease["spec"]["holderIdentity"], "", "released on shutdown");
            assert!(
                server.get(ENDPOINTS, NS, OWN).is_some(),
                "the Endpoint stays: a restart is not a leave"
            );

            // `wgcable leave`: the cluster's Endpoint goes, cluster-b's stays. (Spawned and
            // polled: this thread's runtime serves the API meanwhile.)
            let mut leave = Command::new(env!("CARGO_BIN_EXE_wgcable"))
                .args(["leave", "--broker", "kubernetes", "--kubeconfig"])
                .arg(&kubeconfig)
                .args(["--cluster-id", "cluster-a", "--namespace", NS])
                .env_remove("KUBERNETES_SERVICE_HOST")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start wgcable leave");
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = leave.try_wait().expect("wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "wgcable leave did not finish within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut err = String::new();
            std::io::Read::read_to_string(&mut leave.stderr.take().expect("stderr"), &mut err)
                .expect("stderr");
            assert!(status.success(), "wgcable leave: {status}: {err}");
            assert!(
                err.contains("cluster cluster-a: Endpoint withdrawn from the kubernetes broker"),
                "{err}"
            );
            let left = server.names(ENDPOINTS, NS);
            assert_eq!(left.len(), 1, "{left:?}");
            assert!(left[0].starts_with("cluster-b-"), "{left:?}");
            serving.abort();
            drop(running);
        },
    );
}

/// The image's entrypoint (deploy/Containerfile) with the environment Submariner's operator
/// gives its gateway pod makes a valid configuration (`--check-config`: nothing is contacted).
#[test]
fn the_image_entrypoint_with_the_operators_environment_is_a_valid_configuration() {
    let containerfile = include_str!("../../../deploy/Containerfile");
    let entrypoint = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT line");
    let argv: Vec<String> = serde_json::from_str(entrypoint).expect("exec-form ENTRYPOINT");
    assert_eq!(argv[0], "/usr/local/bin/wgcable");
    let state = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = argv[1..].to_vec();
    // The state directory of the image (an emptyDir under the operator) is not writable here.
    let at = args
        .iter()
        .position(|a| a == "--state-dir")
        .expect("--state-dir");
    args[at + 1] = state.path().display().to_string();
    // The route lookup that finds the private IP needs a default route; this machine may have
    // none, so the address is given (the lookup is the only difference).
    args.extend([
        "--private-ip".into(),
        "172.18.0.10".into(),
        "--check-config".into(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_wgcable"))
        .args(&args)
        .env_clear()
        .envs([
            ("SUBMARINER_NAMESPACE", "submariner-operator"),
            ("SUBMARINER_CLUSTERCIDR", "10.42.0.0/16"),
            ("SUBMARINER_SERVICECIDR", "10.43.0.0/16"),
            ("SUBMARINER_GLOBALCIDR", ""),
            ("SUBMARINER_CLUSTERID", "cluster-a"),
            ("SUBMARINER_COLORCODES", "blue"),
            ("SUBMARINER_DEBUG", "false"),
            ("SUBMARINER_NATENABLED", "false"),
            ("SUBMARINER_BROKER", "k8s"),
            ("SUBMARINER_CABLEDRIVER", "wireguard"),
            ("BROKER_K8S_APISERVER", "broker.example.invalid:6443"),
            ("BROKER_K8S_APISERVERTOKEN", "a-broker-token"),
            ("BROKER_K8S_REMOTENAMESPACE", "submariner-k8s-broker"),
            ("BROKER_K8S_CA", "LS0tLS1CRUdJTg=="),
            ("BROKER_K8S_INSECURE", "false"),
            ("BROKER_K8S_SECRET", ""),
            (
                "CE_IPSEC_PSK",
                "a pre-shared key long enough for the policy",
            ),
            ("CE_IPSEC_PSKSECRET", ""),
            ("SUBMARINER_HEALTHCHECKENABLED", "true"),
            ("SUBMARINER_HEALTHCHECKINTERVAL", "1"),
            ("SUBMARINER_HEALTHCHECKMAXPACKETLOSSCOUNT", "5"),
            ("SUBMARINER_METRICSPORT", "32780"),
            ("NODE_NAME", "node-a"),
            ("POD_NAME", "submariner-gateway-x7k2p"),
            ("CE_IPSEC_NATTPORT", "4500"),
        ])
        .output()
        .expect("run wgcable");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for line in [
        "cluster-id: cluster-a",
        "hostname: node-a",
        "backend: kernel",
        "broker: kubernetes namespace submariner-operator, broker https://broker.example.invalid:6443 namespace submariner-k8s-broker",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("a-broker-token") && !stderr.contains("a-broker-token"));
}
