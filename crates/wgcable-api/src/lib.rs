//! The Submariner-compatible data model of wgcable.
//!
//! * [`Endpoint`] is the `submariner.io/v1` `Endpoint` custom resource (what
//!   `kubectl get endpoints.submariner.io -o yaml` prints) and [`EndpointSpec`] its spec, with
//!   serde names exactly as Submariner's CRD JSON, so YAML and JSON written by Submariner parse
//!   here and what we write parses there. Unknown metadata is kept so documents round-trip.
//! * [`Connection`], [`ConnectionStatus`] and [`LatencyRtt`] are the cable status a gateway
//!   reports; [`NatEndpointInfo`] is what the engine hands a cable driver to connect.
//! * [`EndpointSpec::validate`] turns the stringly-typed spec into a [`ValidatedSpec`] of parsed
//!   addresses, CIDRs, ports and the WireGuard public key, or reports every problem at once.
//!   IPv6 and dual-stack (`private_ips`, `public_ips`, `healthCheckIPs`) are first-class.
//! * [`local_endpoint`] builds the gateway's own Endpoint from a [`LocalEndpointConfig`] the way
//!   Submariner's gateway publishes it (name, cable name, `submariner-io/clusterID` label,
//!   namespace, dual-stack lists, backend_config).
//!
//! What this crate must NOT know about: any I/O (it only parses and formats strings; no files,
//! no Kubernetes API, no network), netlink, WireGuard devices, routing, or the engine's state.

mod connection;
mod endpoint;
mod error;
mod local;
mod parse;
mod policy;
mod serde_util;
mod validate;

pub use connection::{Connection, ConnectionReport, ConnectionStatus, LatencyRtt, NatEndpointInfo};
pub use endpoint::{
    ensure_valid_name, Endpoint, EndpointSpec, ObjectMeta, API_VERSION,
    BACKEND_CONFIG_INTERFACE_NAME, BACKEND_CONFIG_NATT_DISCOVERY_PORT,
    BACKEND_CONFIG_PREFERRED_SERVER, BACKEND_CONFIG_PUBLIC_IP, BACKEND_CONFIG_PUBLIC_KEY,
    BACKEND_CONFIG_UDP_PORT, BACKEND_CONFIG_USING_LOADBALANCER, BACKEND_WIREGUARD, KIND_ENDPOINT,
    KIND_ENDPOINT_LIST, MAX_CLUSTER_ID_LEN,
};
pub use error::{error_chain, ApiError};
pub use local::{local_endpoint, LocalEndpointConfig, CLUSTER_ID_LABEL};
pub use parse::{
    endpoints_from_json_value, parse_endpoint, parse_endpoints, Format, FoundType, Known, Location,
    ParseError, ParseLimits, ParseProblem,
};
pub use policy::{special_purpose_ranges, AdmissionPolicy, Problem, SpecialRange};
pub use validate::{Reason, ValidatedSpec, ValidationError, ValidationErrors};

/// Re-exported so callers can name the key type of [`EndpointSpec::public_key`] without a
/// direct dependency.
pub use wgcable_keys::PublicKey;
