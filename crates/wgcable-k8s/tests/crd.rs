//! The generated CRDs against Submariner's, field by field, and against `deploy/crds.yaml`.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use wgcable_k8s::crd;

/// Fields wgcable's EndpointSpec carries beyond the 0.19 CRD: the dual-stack additions of
/// newer Submariner (optional lists; their JSON names are not verified against a release).
const DUAL_STACK: [&str; 3] = ["private_ips", "public_ips", "healthCheckIPs"];

fn reference() -> BTreeSet<String> {
    let text = include_str!("data/submariner-crd-fields.txt");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let endpoint_spec: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EndpointSpec "))
        .collect();
    let mut rows = BTreeSet::new();
    for line in &lines {
        if line.starts_with("EndpointSpec ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("@EndpointSpec ") {
            let (crd, path) = rest.split_once(' ').expect("@EndpointSpec <crd> <path>");
            for field in &endpoint_spec {
                rows.insert(format!("{crd} {path}.{field}"));
            }
        } else {
            rows.insert((*line).to_owned());
        }
    }
    rows
}

/// The schema flattened into reference rows.
fn rows(crd_name: &str, schema: &Value, path: &str, required: bool, out: &mut BTreeSet<String>) {
    let ty = match schema["type"].as_str() {
        Some("array") => format!("array<{}>", schema["items"]["type"].as_str().unwrap_or("?")),
        Some("object") if schema.get("additionalProperties").is_some() => format!(
            "map<{}>",
            schema["additionalProperties"]["type"]
                .as_str()
                .unwrap_or("?")
        ),
        Some(t) => t.to_owned(),
        None => "untyped".to_owned(),
    };
    let mut constraints = Vec::new();
    for key in [
        "minLength",
        "maxLength",
        "enum",
        "pattern",
        "format",
        "nullable",
        "default",
    ] {
        if let Some(v) = schema.get(key) {
            constraints.push(format!("{key}={v}"));
        }
    }
    if !path.is_empty() {
        let mut row = format!(
            "{crd_name} {path} {ty} {}",
            if required { "required" } else { "optional" }
        );
        if !constraints.is_empty() {
            row.push(' ');
            row.push_str(&constraints.join(","));
        }
        out.insert(row);
    }
    let required_fields: BTreeSet<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(properties) = schema["properties"].as_object() {
        for (name, sub) in properties {
            if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let sub_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            rows(
                crd_name,
                sub,
                &sub_path,
                required_fields.contains(name.as_str()),
                out,
            );
        }
    }
    if schema["type"] == "array" && schema["items"]["type"] == "object" {
        rows(crd_name, &schema["items"], &format!("{path}[]"), true, out);
        // The item row itself is not a field.
        out.remove(&format!("{crd_name} {path}[] object required"));
    }
}

fn generated() -> Vec<CustomResourceDefinition> {
    vec![
        crd::endpoint_crd().expect("endpoint CRD"),
        crd::cluster_crd().expect("cluster CRD"),
        crd::gateway_crd().expect("gateway CRD"),
    ]
}

#[test]
fn the_generated_schemas_are_submariners_field_by_field() {
    let mut ours = BTreeSet::new();
    for crd in generated() {
        let version = &crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("a schema"),
        )
        .expect("encodes");
        // The top level: apiVersion, kind, metadata as every CRD has them.
        for field in ["apiVersion", "kind"] {
            assert_eq!(schema["properties"][field]["type"], "string");
        }
        assert_eq!(schema["properties"]["metadata"]["type"], "object");
        rows(&crd.spec.names.plural, &schema, "", true, &mut ours);
    }
    // Our dual-stack extras, and nothing else, come on top of Submariner's fields.
    let extras: BTreeSet<String> = ours
        .iter()
        .filter(|row| {
            row.split(' ')
                .nth(1)
                .and_then(|p| p.rsplit('.').next())
                .is_some_and(|f| DUAL_STACK.contains(&f))
        })
        .cloned()
        .collect();
    assert_eq!(
        extras.len(),
        3 * 3,
        "in spec, localEndpoint and connections[].endpoint: {extras:#?}"
    );
    for row in &extras {
        assert!(row.ends_with(" array<string> optional"), "{row}");
    }
    let ours: BTreeSet<String> = ours.difference(&extras).cloned().collect();
    let reference = reference();
    let missing: Vec<_> = reference.difference(&ours).collect();
    let unexpected: Vec<_> = ours.difference(&reference).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing from ours: {missing:#?}\nnot in Submariner's: {unexpected:#?}"
    );
}

#[test]
fn names_scope_versions_and_subresources_are_submariners() {
    for (crd, kind, plural) in generated()
        .into_iter()
        .zip([
            ("Endpoint", "endpoints"),
            ("Cluster", "clusters"),
            ("Gateway", "gateways"),
        ])
        .map(|(c, (k, p))| (c, k, p))
    {
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.submariner.io").as_str())
        );
        assert_eq!(crd.spec.group, "submariner.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(
            crd.spec.names.list_kind.as_deref(),
            Some(format!("{kind}List").as_str())
        );
        assert_eq!(
            crd.spec.names.singular.as_deref(),
            Some(kind.to_lowercase().as_str())
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), ("v1", true, true));
        if kind == "Gateway" {
            // `subresources: {}`: no status subresource, the status is written with the object.
            let sub = serde_json::to_value(v.subresources.as_ref().expect("subresources"))
                .expect("encodes");
            assert_eq!(sub, serde_json::json!({}));
            let columns = v
                .additional_printer_columns
                .as_ref()
                .expect("printer column");
            assert_eq!(columns[0].json_path, ".status.haStatus");
            assert_eq!(columns[0].name, "HA Status");
        } else {
            assert!(v.subresources.is_none());
        }
    }
}

#[test]
fn deploy_crds_yaml_is_what_the_types_generate() {
    let checked_in = include_str!("../../../deploy/crds.yaml");
    assert_eq!(
        checked_in,
        crd::crds_yaml().expect("generates"),
        "deploy/crds.yaml is stale: run `cargo run -p wgcable-k8s --example gen-deploy`"
    );
}
