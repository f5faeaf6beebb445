use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wgcable_keys::PublicKey;

use crate::error::ApiError;
use crate::parse::{parse_endpoint, parse_endpoints, Format, FoundType, ParseLimits};
use crate::serde_util::{lenient_string_map, null_as_default};

/// `apiVersion` of Submariner's custom resources.
pub const API_VERSION: &str = "submariner.io/v1";
/// `kind` of an Endpoint.
pub const KIND_ENDPOINT: &str = "Endpoint";
/// `kind` of a typed Endpoint list as the API server returns it.
pub const KIND_ENDPOINT_LIST: &str = "EndpointList";
/// The `backend` value of WireGuard endpoints (Submariner's cable driver name).
pub const BACKEND_WIREGUARD: &str = "wireguard";
/// Longest cluster ID Submariner's CRD accepts (a DNS-1123 label).
pub const MAX_CLUSTER_ID_LEN: usize = 63;

/// backend_config key: the endpoint's WireGuard public key (base64).
pub const BACKEND_CONFIG_PUBLIC_KEY: &str = "publicKey";
/// backend_config key: the name of the endpoint's WireGuard link.
pub const BACKEND_CONFIG_INTERFACE_NAME: &str = "interface-name";
/// backend_config key: the UDP port the endpoint's WireGuard link listens on.
pub const BACKEND_CONFIG_UDP_PORT: &str = "udp-port";
/// backend_config key: the UDP port of Submariner's NAT discovery protocol.
pub const BACKEND_CONFIG_NATT_DISCOVERY_PORT: &str = "natt-discovery-port";
/// backend_config key: how the public IP was resolved (e.g. `ipv4:1.2.3.4`, `lb:name`).
pub const BACKEND_CONFIG_PUBLIC_IP: &str = "public-ip";
/// backend_config key: `"true"` when the public IP belongs to a load balancer.
pub const BACKEND_CONFIG_USING_LOADBALANCER: &str = "using-loadbalancer";
/// backend_config key: `"true"` when this gateway prefers to be the server side of a cable.
pub const BACKEND_CONFIG_PREFERRED_SERVER: &str = "preferred-server";

/// The spec of a Submariner Endpoint: one gateway of one cluster.
///
/// Field names match Submariner's CRD JSON. Every field is optional when parsing (missing or
/// `null` means empty) and values are kept as strings exactly as published; use
/// [`EndpointSpec::validate`] to get parsed, checked values.
///
/// With the `schemars` feature the type also describes Submariner's CRD schema (wgcable-k8s
/// generates it for what is serialized: a field always written is `required`, as a Go field
/// without `omitempty` is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct EndpointSpec {
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "schemars", schemars(length(min = 1, max = 63)))]
    pub cluster_id: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub cable_name: String,

    #[serde(
        rename = "healthCheckIP",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub health_check_ip: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub hostname: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub subnets: Vec<String>,

    // private_ip and public_ip are always written, even empty: older Submariner CRDs list them
    // as required fields.
    #[serde(default, deserialize_with = "null_as_default")]
    pub private_ip: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub public_ip: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub nat_enabled: bool,

    #[serde(default, deserialize_with = "null_as_default")]
    pub backend: String,

    #[serde(
        default,
        deserialize_with = "lenient_string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub backend_config: BTreeMap<String, String>,

    #[serde(
        rename = "private_ips",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub private_ips: Vec<String>,

    #[serde(
        rename = "public_ips",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub public_ips: Vec<String>,

    #[serde(
        rename = "healthCheckIPs",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub health_check_ips: Vec<String>,
}

impl EndpointSpec {
    /// A backend_config value, with an empty string treated as absent.
    pub fn backend_config_value(&self, key: &str) -> Option<&str> {
        self.backend_config
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Sets a backend_config entry, replacing any previous value.
    pub fn set_backend_config(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.backend_config.insert(key.into(), value.into());
    }

    /// The published WireGuard public key as text, if any.
    pub fn public_key_str(&self) -> Option<&str> {
        self.backend_config_value(BACKEND_CONFIG_PUBLIC_KEY)
    }

    /// The published WireGuard public key, `Ok(None)` if there is none.
    pub fn public_key(&self) -> Result<Option<PublicKey>, ApiError> {
        self.public_key_str()
            .map(|value| {
                PublicKey::from_base64(value).map_err(|source| ApiError::BadPublicKey { source })
            })
            .transpose()
    }

    /// Publishes `key` as this endpoint's WireGuard public key.
    pub fn set_public_key(&mut self, key: &PublicKey) {
        self.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, key.to_base64());
    }

    /// The name of the endpoint's WireGuard link, if published.
    pub fn interface_name(&self) -> Option<&str> {
        self.backend_config_value(BACKEND_CONFIG_INTERFACE_NAME)
    }

    /// The WireGuard listen port, `Ok(None)` if not published.
    pub fn udp_port(&self) -> Result<Option<u16>, ApiError> {
        self.port(BACKEND_CONFIG_UDP_PORT)
    }

    /// The NAT discovery port, `Ok(None)` if not published.
    pub fn natt_discovery_port(&self) -> Result<Option<u16>, ApiError> {
        self.port(BACKEND_CONFIG_NATT_DISCOVERY_PORT)
    }

    /// The public IP resolver setting (e.g. `ipv4:1.2.3.4`), if any. Not an address: see
    /// `public_ip` / `public_ips` for the resolved one.
    pub fn public_ip_config(&self) -> Option<&str> {
        self.backend_config_value(BACKEND_CONFIG_PUBLIC_IP)
    }

    fn port(&self, key: &'static str) -> Result<Option<u16>, ApiError> {
        self.backend_config_value(key)
            .map(|value| parse_port(value).ok_or(ApiError::BadPort { key }))
            .transpose()
    }
}

/// A port number 1..=65535, decimal digits only (no sign, no spaces).
pub(crate) fn parse_port(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u16>().ok().filter(|&port| port != 0)
}

/// The Kubernetes object metadata we care about, plus everything else kept verbatim (uid,
/// resourceVersion, creationTimestamp, generation, annotations, ...) so that a document printed
/// by kubectl round-trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    #[serde(
        default,
        deserialize_with = "lenient_string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,

    /// Every other metadata field, untouched.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A `submariner.io/v1` `Endpoint` custom resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    // Defaulted so that a document without them gets our clear "expected apiVersion ..." error
    // rather than serde's "missing field".
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,

    #[serde(default)]
    pub kind: String,

    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,

    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: EndpointSpec,
}

impl Endpoint {
    /// An Endpoint for `spec`, named `<cluster_id>-<cable_name>` made DNS-1123-safe as
    /// Submariner names them.
    pub fn new(spec: EndpointSpec) -> Self {
        let name = ensure_valid_name(&format!("{}-{}", spec.cluster_id, spec.cable_name));
        Endpoint {
            api_version: API_VERSION.to_owned(),
            kind: KIND_ENDPOINT.to_owned(),
            metadata: ObjectMeta {
                name,
                ..ObjectMeta::default()
            },
            spec,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Parses one Endpoint document and checks its apiVersion and kind, within the default
    /// [`ParseLimits`]; errors never quote the input (see [`crate::parse_endpoint`]).
    pub fn from_yaml(text: &str) -> Result<Self, ApiError> {
        parse_endpoint(text.as_bytes(), Format::Yaml, &ParseLimits::default()).map_err(|source| {
            ApiError::Parse {
                what: "Endpoint from YAML",
                source: Box::new(source),
            }
        })
    }

    /// Parses one Endpoint JSON object and checks its apiVersion and kind, within the default
    /// [`ParseLimits`].
    pub fn from_json(text: &str) -> Result<Self, ApiError> {
        parse_endpoint(text.as_bytes(), Format::Json, &ParseLimits::default()).map_err(|source| {
            ApiError::Parse {
                what: "Endpoint from JSON",
                source: Box::new(source),
            }
        })
    }

    pub fn to_yaml(&self) -> Result<String, ApiError> {
        serde_yaml_ng::to_string(self).map_err(|source| ApiError::FormatYaml {
            what: "Endpoint",
            source,
        })
    }

    pub fn to_json(&self) -> Result<String, ApiError> {
        serde_json::to_string_pretty(self).map_err(|source| ApiError::FormatJson {
            what: "Endpoint",
            source,
        })
    }

    /// Parses every Endpoint in `text`: one or more YAML documents (separated by `---`), each an
    /// Endpoint or a list of them (`kind: List` as `kubectl get ... -o yaml` prints, or
    /// `kind: EndpointList` as the API server returns). Empty documents are skipped. Within the
    /// default [`ParseLimits`]; see [`crate::parse_endpoints`].
    pub fn list_from_yaml(text: &str) -> Result<Vec<Endpoint>, ApiError> {
        parse_endpoints(text.as_bytes(), Format::Yaml, &ParseLimits::default()).map_err(|source| {
            ApiError::Parse {
                what: "Endpoints from YAML",
                source: Box::new(source),
            }
        })
    }

    /// Fails unless apiVersion is `submariner.io/v1` and kind is `Endpoint`.
    pub fn check_type(&self, what: &str) -> Result<(), ApiError> {
        if self.api_version == API_VERSION && self.kind == KIND_ENDPOINT {
            return Ok(());
        }
        Err(ApiError::WrongType {
            what: what.to_owned(),
            expected_api_version: API_VERSION,
            expected_kind: KIND_ENDPOINT,
            found: FoundType::of(&self.api_version, &self.kind),
        })
    }
}

/// Makes `name` a valid Kubernetes object name the way Submariner does: lowercase, and every
/// character other than a letter, digit, `-` or `.` replaced by `-`.
pub fn ensure_valid_name(name: &str) -> String {
    name.chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_like_submariner() {
        let spec = EndpointSpec {
            cluster_id: "Cluster_A".into(),
            cable_name: "submariner-cable-cluster-a-172-18-0-4".into(),
            ..EndpointSpec::default()
        };
        let endpoint = Endpoint::new(spec.clone());
        assert_eq!(
            endpoint.name(),
            "cluster-a-submariner-cable-cluster-a-172-18-0-4"
        );
        assert_eq!(endpoint.api_version, API_VERSION);
        assert_eq!(endpoint.kind, KIND_ENDPOINT);
        assert_eq!(endpoint.spec, spec);
        // Kubernetes names are ASCII, so non-ASCII letters are replaced too.
        assert_eq!(ensure_valid_name("a:b::1/Ü.x"), "a-b--1--.x");
    }

    #[test]
    fn ports_are_strict() {
        for (text, want) in [
            ("4500", Some(4500)),
            ("1", Some(1)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("-1", None),
            ("+4500", None),
            (" 4500", None),
            ("45 00", None),
            ("abc", None),
            ("", None),
        ] {
            assert_eq!(parse_port(text), want, "{text:?}");
        }
    }

    #[test]
    fn backend_config_accessors() {
        let mut spec = EndpointSpec::default();
        assert_eq!(spec.public_key().expect("absent is ok"), None);
        assert_eq!(spec.udp_port().expect("absent is ok"), None);
        spec.set_backend_config(BACKEND_CONFIG_UDP_PORT, "4500");
        spec.set_backend_config(BACKEND_CONFIG_NATT_DISCOVERY_PORT, "4490");
        spec.set_backend_config(BACKEND_CONFIG_INTERFACE_NAME, "submariner");
        spec.set_backend_config(BACKEND_CONFIG_PUBLIC_IP, "ipv4:203.0.113.7");
        spec.set_backend_config(
            BACKEND_CONFIG_PUBLIC_KEY,
            "b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=",
        );
        assert_eq!(spec.udp_port().expect("valid"), Some(4500));
        assert_eq!(spec.natt_discovery_port().expect("valid"), Some(4490));
        assert_eq!(spec.interface_name(), Some("submariner"));
        assert_eq!(spec.public_ip_config(), Some("ipv4:203.0.113.7"));
        let key = spec.public_key().expect("valid").expect("present");
        assert_eq!(
            spec.public_key_str(),
            Some("b98wRzVxljvjDMk9tpg4DKZtbSE/V/iyLBPXQhjn6Bo=")
        );
        let mut other = EndpointSpec::default();
        other.set_public_key(&key);
        assert_eq!(other.public_key_str(), spec.public_key_str());

        spec.set_backend_config(BACKEND_CONFIG_UDP_PORT, "0");
        let err = spec.udp_port().expect_err("port 0");
        assert_eq!(
            err.to_string(),
            "backend_config \"udp-port\" is not a port number (1-65535)"
        );
        spec.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, "short");
        let err = spec.public_key().expect_err("bad key");
        assert!(matches!(err, ApiError::BadPublicKey { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
        // Empty means absent.
        spec.set_backend_config(BACKEND_CONFIG_PUBLIC_KEY, "");
        assert_eq!(spec.public_key().expect("empty is absent"), None);
    }
}
