//! The broker seam: where remote Endpoints come from, who may act on them, and the one layer
//! ([`admission`]) that turns what a source delivers into trusted, typed Endpoints.
//!
//! A source only *fetches*: a directory of files, etcd keys, Kubernetes objects. It hands the
//! gateway [`RawObject`]s (bytes and the object's identity in the source, nothing parsed or
//! trusted) as a stream of [`SourceEvent`]s, in the shape of kube-rs's `watcher`: a full
//! [`SourceEvent::Snapshot`] first and whenever the source lost track, then
//! [`SourceEvent::Apply`]/[`SourceEvent::Delete`] per object. Everything a remote cluster
//! publishes is untrusted input; parsing, limits, validation, identity and conflict rules are
//! the admission layer's business, the same for every source: [`debounce`] batches the
//! events, [`admission::AdmissionRunner`] turns each batch into an
//! [`admission::AdmissionUpdate`] for the engine.
//!
//! [`FileSource`] is the embedded source: one directory shared by the gateways.
//!
//! [`LeaderElector`] is the seam for active/passive gateways: only the leader publishes and
//! drives the cable driver. [`AlwaysLeader`] is the single-gateway implementation.
//!
//! What this crate must NOT know about: devices, netlink, WireGuard peers, metrics (it
//! reports refusals with reason codes; the engine counts them), or any particular remote
//! source's client library (the Kubernetes and etcd sources implement the traits elsewhere).

pub mod admission;
pub mod debounce;
pub mod file;
mod fsutil;
mod leader;
mod source;
mod util;

pub use file::{FileSource, FileSourceConfig};
pub use fsutil::write_atomic;
pub use leader::{AlwaysLeader, LeaderElector, Role};
pub use source::{
    EndpointSource, Format, GatewayReport, ObjectKey, RawObject, SourceError, SourceEvent,
    SourceHealth, SourceProblem,
};
pub use util::is_cluster_id;

/// An error and its causes on one line (the workspace's one formatter).
pub(crate) use wgcable_api::error_chain;
