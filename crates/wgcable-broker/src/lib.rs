//! The broker seam: where remote Endpoints come from, who may act on them, and (in
//! [`admission`], once it lands) the one layer that turns what a source delivers into trusted,
//! typed Endpoints.
//!
//! A source only *fetches*: a directory of files, etcd keys, Kubernetes objects. It hands the
//! gateway [`RawObject`]s (bytes and the object's identity in the source, nothing parsed or
//! trusted) as a stream of [`SourceEvent`]s, in the shape of kube-rs's `watcher`: a full
//! [`SourceEvent::Snapshot`] first and whenever the source lost track, then
//! [`SourceEvent::Apply`]/[`SourceEvent::Delete`] per object. Everything a remote cluster
//! publishes is untrusted input; parsing, limits, validation, identity and conflict rules are
//! the admission layer's business, the same for every source.
//!
//! [`LeaderElector`] is the seam for active/passive gateways: only the leader publishes and
//! drives the cable driver. [`AlwaysLeader`] is the single-gateway implementation.
//!
//! What this crate must NOT know about: devices, netlink, WireGuard peers, metrics, or any
//! particular source's client library (the file, Kubernetes and etcd sources implement the
//! traits elsewhere).

mod leader;
mod source;

pub use leader::{AlwaysLeader, LeaderElector, Role};
pub use source::{
    EndpointSource, Format, GatewayReport, ObjectKey, RawObject, SourceError, SourceEvent,
    SourceHealth,
};
