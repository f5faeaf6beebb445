//! The CustomResourceDefinitions of Submariner's Endpoint, Cluster and Gateway, generated from
//! the Rust types (schemars), shaped like the ones Submariner's controller-gen writes: no
//! descriptions, no defaults, `required` exactly where Go marshals a field without `omitempty`.
//! `deploy/crds.yaml` is this module's output; a test keeps the two equal.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde_json::{json, Value};
use wgcable_api::EndpointSpec;

use crate::resources::{ClusterSpec, GatewayStatus, GROUP, VERSION};
use crate::Error;

/// A subschema of `T` as a CRD wants it: inlined, structural, without the keys controller-gen
/// does not write for these types (descriptions, defaults, titles, `nullable`).
fn schema_of<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
            // What is *written* decides `required`: a field serialized always is required, as a
            // Go field without `omitempty` is in controller-gen's output. (For deserializing,
            // wgcable's types are lenient and would make every field optional.)
            s.contract = schemars::generate::Contract::Serialize;
        })
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    strip(&mut value);
    value
}

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["description", "default", "title", "nullable", "$schema"] {
                map.remove(key);
            }
            for v in map.values_mut() {
                strip(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The top-level object schema: apiVersion, kind, metadata, and `field` (spec or status).
fn object_schema(field: &str, schema: Value) -> Result<JSONSchemaProps, Error> {
    let value = json!({
        "type": "object",
        "required": [field],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            field: schema,
        },
    });
    serde_json::from_value(value).map_err(|source| Error::Encode {
        what: "a CRD schema",
        source,
    })
}

fn crd(
    kind: &str,
    plural: &str,
    schema: JSONSchemaProps,
    printer_columns: Option<Vec<CustomResourceColumnDefinition>>,
    subresources: Option<CustomResourceSubresources>,
) -> CustomResourceDefinition {
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{GROUP}")),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: kind.to_owned(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.to_owned(),
                singular: Some(kind.to_lowercase()),
                ..CustomResourceDefinitionNames::default()
            },
            scope: "Namespaced".to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                additional_printer_columns: printer_columns,
                subresources,
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// `endpoints.submariner.io`.
pub fn endpoint_crd() -> Result<CustomResourceDefinition, Error> {
    let schema = object_schema("spec", schema_of::<EndpointSpec>())?;
    Ok(crd("Endpoint", "endpoints", schema, None, None))
}

/// `clusters.submariner.io`.
pub fn cluster_crd() -> Result<CustomResourceDefinition, Error> {
    let schema = object_schema("spec", schema_of::<ClusterSpec>())?;
    Ok(crd("Cluster", "clusters", schema, None, None))
}

/// `gateways.submariner.io`: status only, with `subresources: {}` (no status subresource, so
/// the status is written with a plain update) and the `HA Status` printer column.
pub fn gateway_crd() -> Result<CustomResourceDefinition, Error> {
    let schema = object_schema("status", schema_of::<GatewayStatus>())?;
    let column = CustomResourceColumnDefinition {
        description: Some("High availability status of the Gateway".to_owned()),
        json_path: ".status.haStatus".to_owned(),
        name: "HA Status".to_owned(),
        type_: "string".to_owned(),
        ..CustomResourceColumnDefinition::default()
    };
    Ok(crd(
        "Gateway",
        "gateways",
        schema,
        Some(vec![column]),
        Some(CustomResourceSubresources::default()),
    ))
}

/// All three CRDs as one multi-document YAML file (`deploy/crds.yaml`).
pub fn crds_yaml() -> Result<String, Error> {
    let mut out = String::from(
        "# Generated by wgcable-k8s (`cargo run -p wgcable-k8s --example gen-deploy`); do not edit.\n",
    );
    for crd in [endpoint_crd()?, cluster_crd()?, gateway_crd()?] {
        out.push_str("---\n");
        let text = serde_yaml_ng::to_string(&crd).map_err(|source| Error::EncodeYaml {
            what: "a CRD",
            source,
        })?;
        out.push_str(&text);
    }
    Ok(out)
}
