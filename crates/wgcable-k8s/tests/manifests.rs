//! Every manifest in `deploy/` parses into k8s-openapi's types and round-trips unchanged (so a
//! misspelt field, which the types would silently drop, fails here), and the RBAC is exactly
//! what Submariner's operator grants its gateway.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every document of every YAML file, as (file, JSON value).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            if !value.is_null() {
                out.push((
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                    value,
                ));
            }
        }
    }
    out
}

/// Parses `value` as `T` and checks nothing was lost on the way.
fn typed<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", value["kind"]));
    let back = serde_json::to_value(&object).expect("encodes");
    assert_eq!(
        &back, value,
        "{file}: {} has fields k8s-openapi does not know",
        value["kind"]
    );
    object
}

#[test]
fn every_manifest_parses_into_its_type() {
    let mut kinds = BTreeMap::new();
    for (file, value) in documents() {
        let kind = value["kind"].as_str().unwrap_or("").to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&file, &value)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&file, &value)),
            "Role" => drop(typed::<Role>(&file, &value)),
            "RoleBinding" => drop(typed::<RoleBinding>(&file, &value)),
            "ClusterRole" => drop(typed::<ClusterRole>(&file, &value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&file, &value)),
            "DaemonSet" => drop(typed::<DaemonSet>(&file, &value)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&file, &value)),
            other => panic!("{file}: no test knows kind {other:?}; add it here"),
        }
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(kinds.get("CustomResourceDefinition"), Some(&3));
    assert_eq!(kinds.get("DaemonSet"), Some(&1));
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let owned = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: owned(groups),
        resources: owned(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

#[test]
fn rbac_is_exactly_what_the_operator_grants() {
    let crud = ["get", "list", "watch", "create", "update", "delete"];
    let docs = documents();
    let find = |kind: &str| {
        docs.iter()
            .find(|(_, v)| v["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/"))
            .clone()
    };
    let (file, role) = find("Role");
    let role: Role = typed(&file, &role);
    assert_eq!(
        role.rules.expect("rules"),
        [
            rule(&[""], &["pods"], &["get", "update", "patch"]),
            rule(
                &["submariner.io"],
                &["clusters", "endpoints", "gateways"],
                &crud
            ),
            rule(&["coordination.k8s.io"], &["leases"], &crud),
        ]
    );
    let (file, cluster_role) = find("ClusterRole");
    let cluster_role: ClusterRole = typed(&file, &cluster_role);
    assert_eq!(
        cluster_role.rules.expect("rules"),
        [
            rule(&[""], &["configmaps"], &["get"]),
            rule(
                &[""],
                &["pods", "services", "nodes"],
                &["get", "list", "watch"]
            ),
        ]
    );
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        let (_, binding) = find(kind);
        assert_eq!(binding["subjects"][0]["name"], "submariner-gateway");
        assert_eq!(binding["subjects"][0]["namespace"], "submariner-operator");
        assert_eq!(binding["roleRef"]["name"], "submariner-gateway");
    }
}

#[test]
fn the_daemonset_keeps_restarts_hitless_and_passes_submariners_environment() {
    let docs = documents();
    let (file, value) = docs
        .iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .expect("DaemonSet")
        .clone();
    let ds: DaemonSet = typed(&file, &value);
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("submariner-gateway")
    );
    assert_eq!(
        pod.node_selector
            .expect("node selector")
            .get("submariner.io/gateway")
            .map(String::as_str),
        Some("true")
    );
    let container = &pod.containers[0];
    let command = container.command.clone().expect("command");
    let joined = command.join(" ");
    assert!(joined.contains("gateway --broker kubernetes"), "{joined}");
    assert!(
        joined.contains("--backend kernel"),
        "the device must outlive the pod: {joined}"
    );
    assert!(joined.contains("--state-dir /var/lib/wgcable"), "{joined}");
    assert!(joined.contains("--private-ip $(NODE_IP)"), "{joined}");
    assert!(
        container.lifecycle.is_none(),
        "nothing tears the data path down on stop"
    );
    let state = pod
        .volumes
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == "state")
        .expect("a state volume");
    assert_eq!(
        state.host_path.expect("a hostPath").path,
        "/var/lib/wgcable"
    );
    let env: Vec<String> = container
        .env
        .clone()
        .expect("env")
        .into_iter()
        .map(|e| e.name)
        .collect();
    for name in [
        "SUBMARINER_NAMESPACE",
        "SUBMARINER_CLUSTERID",
        "SUBMARINER_CLUSTERCIDR",
        "SUBMARINER_SERVICECIDR",
        "SUBMARINER_GLOBALCIDR",
        "SUBMARINER_NATENABLED",
        "BROKER_K8S_APISERVER",
        "BROKER_K8S_REMOTENAMESPACE",
        "BROKER_K8S_SECRET",
        "CE_IPSEC_PSKSECRET",
        "CE_IPSEC_NATTPORT",
        "SUBMARINER_HEALTHCHECKENABLED",
        "SUBMARINER_METRICSPORT",
        "NODE_NAME",
        "POD_NAME",
        "NODE_IP",
    ] {
        assert!(env.iter().any(|e| e == name), "{name} missing");
    }
}
