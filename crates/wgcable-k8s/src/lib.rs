//! Submariner's Kubernetes side of wgcable.
//!
//! * [`resources`]: the `submariner.io/v1` Endpoint, Cluster and Gateway as kube-rs types, on
//!   wgcable-api's spec and status types; [`crd`] generates their CRDs (checked in as
//!   `deploy/crds.yaml`).
//!
//! What this crate must NOT know about: devices, netlink, WireGuard peers, metrics, or how an
//! Endpoint is validated (it hands objects over as bytes; admission is wgcable-broker's).

pub mod crd;
mod error;
pub mod resources;

pub use error::Error;
