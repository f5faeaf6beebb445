//! Submariner's `submariner.io/v1` resources as kube-rs types: [`Endpoint`], [`Cluster`],
//! [`Gateway`], and [`Raw`], an object kept as the JSON the API server returned.
//!
//! The spec and status types are wgcable-api's ([`EndpointSpec`], [`Connection`]), so what is
//! written here is what the rest of wgcable means by an Endpoint. `kube::Resource` is
//! implemented by hand rather than with `#[derive(CustomResource)]`: the derive wants to own the
//! spec struct (ours lives in wgcable-api, which must stay free of Kubernetes), and Submariner's
//! Gateway has a status but no spec, which the derive cannot express.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::{Deserialize, Serialize};
use wgcable_api::{Connection, EndpointSpec};

/// The API group of Submariner's resources.
pub const GROUP: &str = "submariner.io";
/// The version of Submariner's resources.
pub const VERSION: &str = "v1";
/// `apiVersion` of Submariner's resources.
pub const API_VERSION: &str = "submariner.io/v1";
/// The label that binds an Endpoint or Cluster to the cluster that published it (admiral's
/// `federate.ClusterIDLabelKey`).
pub const CLUSTER_ID_LABEL: &str = "submariner-io/clusterID";
/// The Gateway annotation holding the Unix time of its last refresh.
pub const UPDATE_TIMESTAMP_ANNOTATION: &str = "update-timestamp";

macro_rules! submariner_resource {
    ($ty:ident, $kind:literal, $plural:literal) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(API_VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl $ty {
            /// `kind` of this resource.
            pub const KIND: &'static str = $kind;
        }
    };
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

/// A `submariner.io/v1` Endpoint: one gateway of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "endpoint_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: EndpointSpec,
}
submariner_resource!(Endpoint, "Endpoint", "endpoints");

fn endpoint_kind() -> String {
    Endpoint::KIND.to_owned()
}

impl Endpoint {
    /// An Endpoint named as Submariner names it (`<cluster_id>-<cable_name>`, DNS-safe).
    pub fn new(spec: EndpointSpec) -> Self {
        let name = wgcable_api::Endpoint::new(spec.clone()).metadata.name;
        Endpoint {
            api_version: api_version(),
            kind: endpoint_kind(),
            metadata: ObjectMeta {
                name: Some(name),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

/// The spec of a `submariner.io/v1` Cluster (the local cluster's CIDRs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterSpec {
    #[schemars(length(min = 1, max = 63))]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub color_codes: Vec<String>,
    #[serde(default)]
    pub service_cidr: Vec<String>,
    #[serde(default)]
    pub cluster_cidr: Vec<String>,
    #[serde(default)]
    pub global_cidr: Vec<String>,
}

/// A `submariner.io/v1` Cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "cluster_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ClusterSpec,
}
submariner_resource!(Cluster, "Cluster", "clusters");

fn cluster_kind() -> String {
    Cluster::KIND.to_owned()
}

impl Cluster {
    /// The local cluster's Cluster object, named after its id as Submariner names it.
    pub fn new(spec: ClusterSpec) -> Self {
        Cluster {
            api_version: api_version(),
            kind: cluster_kind(),
            metadata: ObjectMeta {
                name: Some(wgcable_api::ensure_valid_name(&spec.cluster_id)),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

/// The status of a `submariner.io/v1` Gateway, field for field as Submariner's
/// `GatewayStatus` (every field is always written, `connections` as `[]` when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GatewayStatus {
    #[serde(default)]
    pub version: String,
    /// `active` or `passive`.
    #[serde(rename = "haStatus", default)]
    pub ha_status: String,
    #[serde(rename = "localEndpoint", default)]
    pub local_endpoint: EndpointSpec,
    #[serde(rename = "statusFailure", default)]
    pub status_failure: String,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// A `submariner.io/v1` Gateway: what one gateway pod reports (`subctl show connections`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "gateway_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: GatewayStatus,
}
submariner_resource!(Gateway, "Gateway", "gateways");

fn gateway_kind() -> String {
    Gateway::KIND.to_owned()
}

impl Gateway {
    /// A Gateway named after `hostname` (made DNS-safe as Submariner does).
    pub fn new(hostname: &str, status: GatewayStatus) -> Self {
        Gateway {
            api_version: api_version(),
            kind: gateway_kind(),
            metadata: ObjectMeta {
                name: Some(wgcable_api::ensure_valid_name(hostname)),
                ..ObjectMeta::default()
            },
            status,
        }
    }
}

/// An object of resource `K` exactly as the API server returned it: the whole JSON value, plus
/// its metadata read leniently (a malformed spec, or even malformed metadata, never fails the
/// decoding of a list or watch event, so one bad object cannot stall a watch).
///
/// The value is re-encoded with `serde_json` when handed on; for what an API server can return
/// (its own encoding of stored objects: no duplicate keys, int64 numbers) nothing is lost.
pub struct Raw<K> {
    pub metadata: ObjectMeta,
    pub value: serde_json::Value,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Raw<K> {
    /// Wraps a JSON object; the metadata is read leniently.
    pub fn from_value(value: serde_json::Value) -> Self {
        let metadata = value
            .get("metadata")
            .and_then(|m| ObjectMeta::deserialize(m).ok())
            .unwrap_or_default();
        Raw {
            metadata,
            value,
            _kind: PhantomData,
        }
    }

    /// `metadata.name`, empty when missing.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    /// `spec.cluster_id` if it is a string (read without trusting anything else).
    pub fn spec_cluster_id(&self) -> Option<&str> {
        self.value
            .get("spec")
            .and_then(|s| s.get("cluster_id"))
            .and_then(|c| c.as_str())
    }
}

impl<K> Clone for Raw<K> {
    fn clone(&self) -> Self {
        Raw {
            metadata: self.metadata.clone(),
            value: self.value.clone(),
            _kind: PhantomData,
        }
    }
}

// By hand: the value is untrusted input and must never reach a log through `{:?}`.
impl<K> fmt::Debug for Raw<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raw")
            .field("name", &self.metadata.name)
            .field("namespace", &self.metadata.namespace)
            .field("resource_version", &self.metadata.resource_version)
            .finish_non_exhaustive()
    }
}

impl<'de, K> Deserialize<'de> for Raw<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Raw::from_value)
    }
}

impl<K> Serialize for Raw<K> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<K> Resource for Raw<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
