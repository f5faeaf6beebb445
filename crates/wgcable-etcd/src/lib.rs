//! The etcd endpoint source (`--broker etcd`): Endpoints exchanged through an etcd cluster,
//! for sites that are not Kubernetes clusters (VMs, bare-metal gateways).
//!
//! **Layout.** One key per cluster, `<prefix>/endpoints/<cluster-id>` (default prefix
//! `/wgcable`), whose value is the cluster's Endpoint object in the file broker's schema (YAML
//! or JSON; this source writes YAML). Only keys that match the layout exactly, with a DNS-label
//! cluster id, are delivered; the key binds the value to that cluster (`bound_cluster`), its
//! `create_revision` is the object's creation order and its `mod_revision` its version. Other
//! keys under `<prefix>/endpoints/` are reported as `SourceEvent::Refused` (reason
//! `key_layout`, the key made printable, never the value; once per key, and a `Delete` when
//! the key goes), counted ([`EtcdStats::ignored_keys`]) and never delivered. The local
//! cluster's key (`EtcdConfig::local_cluster`) is the source's `own_key`.
//!
//! **Fetch only.** Values are handed on as bytes (cut to the admission size limit plus one
//! byte); parsing, validation and conflict rules are the admission layer's, the same for every
//! source. What this source bounds itself: the gRPC message size (so no response is received
//! whole above it), the number of keys and the total bytes it holds.
//!
//! **Writing.** Each gateway writes only its own cluster's key, with a compare-and-swap on the
//! key's revision (the `publish` module says exactly what that protects against). No etcd lease is
//! attached: an Endpoint disappears only when its key is deleted (`wgcable leave`, or an
//! operator), never because a lease lapsed while a gateway or etcd was down.
//!
//! **Watching.** A listing, then a watch resumed from the last delivered revision after any
//! failure; a compacted revision leads to a new listing and `Snapshot` (the `watch` module describes the loop). An
//! unreachable, slow or leaderless etcd only produces `Health(Unhealthy)` events and retries
//! with a bounded, jittered backoff: the broker never cuts a working tunnel.
//!
//! What this crate must NOT know about: the engine, devices, netlink, metrics, or how an
//! Endpoint's content is judged (it never parses values).

mod backoff;
mod config;
mod error;
mod layout;
mod publish;
mod source;
mod tracker;
mod watch;

#[cfg(feature = "testing")]
pub mod testing;

pub use backoff::Backoff;
pub use config::EtcdConfig;
pub use error::Error;
pub use layout::{is_dns_label, Layout, DEFAULT_PREFIX};
pub use source::{EtcdSource, EtcdStats};
