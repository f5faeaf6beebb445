//! The endpoint source seam.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use wgcable_api::{Connection, Endpoint};

use crate::Role;

/// Where an object lives in its source: the file name, the etcd key, `namespace/name`.
///
/// Sources only hand out keys that are safe to print (they come from the layout the source
/// itself defines, e.g. file names matching `<cluster-id>.yaml`, keys under the prefix): the
/// key is how logs, metrics and `wgcable show conflicts` name an object, never its content.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(pub String);

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an object's bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Yaml,
    Json,
}

/// One object as the source holds it: untrusted bytes plus what the source itself vouches for.
#[derive(Clone, PartialEq, Eq)]
pub struct RawObject {
    pub key: ObjectKey,
    /// The cluster the object's *location* binds it to: the file `<id>.yaml`, the etcd key
    /// `<prefix>/endpoints/<id>`, the Kubernetes `submariner-io/clusterID` label. An object
    /// whose `spec.cluster_id` differs is an impostor and is refused. `None` when the source
    /// has no such binding.
    pub bound_cluster: Option<String>,
    pub format: Format,
    /// The object's bytes, already bounded by the source's read (a source never reads more
    /// than the admission layer's size limit plus one byte, so an oversized object is seen as
    /// oversized rather than read whole).
    pub bytes: Vec<u8>,
    /// The source's own creation order for the object (etcd's create revision, the Kubernetes
    /// creationTimestamp in seconds, ...): smaller is older. Only compared within one source,
    /// to break ties between newcomers deterministically; `None` when the source has none it
    /// can vouch for.
    pub created: Option<u64>,
    /// The object's version in the source (etcd mod revision, resourceVersion, ...), for logs
    /// and to tell a real change from a re-delivery; `None` when there is none.
    pub version: Option<String>,
}

// By hand: the bytes are untrusted input (they may be anything a link pointed at, even a key
// file) and must never reach a log through `{:?}`.
impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawObject")
            .field("key", &self.key)
            .field("bound_cluster", &self.bound_cluster)
            .field("format", &self.format)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("created", &self.created)
            .field("version", &self.version)
            .finish()
    }
}

/// Whether the source can currently reach what it reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceHealth {
    Healthy,
    /// Unreachable, slow, leaderless...: what is known stays in place (the broker never cuts
    /// a working tunnel); the message says what is wrong, for `/readyz` and logs.
    Unhealthy(String),
}

impl SourceHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, SourceHealth::Healthy)
    }
}

/// What a source tells the gateway, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// Everything the source holds now; an object not listed is gone. Always the first event
    /// of a stream apart from [`SourceEvent::Health`] (a source that cannot reach its backend
    /// at start reports that while it retries), and sent again whenever the source lost track
    /// of changes (a watch that could not be resumed, a compacted revision, a relist), so
    /// removals made meanwhile are seen by diffing against the previous snapshot.
    Snapshot(Vec<RawObject>),
    /// The object was created or changed.
    Apply(RawObject),
    /// The object is gone.
    Delete(ObjectKey),
    /// The source's health changed. Objects already delivered stay valid either way.
    Health(SourceHealth),
    /// The source holds something at `key` that it will not read (for the file source: a
    /// symlink, a FIFO, a device, a file name that is not `<cluster-id>.yaml`). It counts as
    /// no object (a cluster whose object turns into this leaves); the event exists so the
    /// refusal is counted and shown like every other, with the source's stable reason code.
    Refused {
        key: ObjectKey,
        problem: SourceProblem,
    },
}

/// Why a source refused to read an object: a stable reason code (a metrics label, e.g.
/// `symlink`) and a message naming the rule, never the object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceProblem {
    pub reason: &'static str,
    pub message: String,
}

/// What the gateway reports about itself each status interval (Submariner's Gateway object:
/// `subctl show connections` reads it). Sources without such an object ignore it.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayReport {
    /// The local Endpoint as published.
    pub local: Endpoint,
    pub role: Role,
    pub connections: Vec<Connection>,
    /// Why the gateway is not working, if it is not (`statusFailure`); empty when fine.
    pub status_failure: String,
    pub reported_at: SystemTime,
}

/// Why a source operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be reached right now (network, server down, leaderless): retry with
    /// backoff; nothing already known is dropped.
    #[error("{action}: the broker is unavailable")]
    Unavailable {
        /// What was being done.
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation cannot succeed as configured (permissions, a path that is not a
    /// directory, bad TLS files, an object owned by someone else...): `action` says what to do.
    #[error("{action}")]
    Failed {
        /// What was being done, and what to do about it.
        action: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl SourceError {
    /// True when retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SourceError::Unavailable { .. })
    }
}

/// Where remote Endpoints come from and where the local one is published.
///
/// Methods take `&self` so the gateway can publish while the watch stream is being polled.
#[async_trait]
pub trait EndpointSource: Send + Sync + fmt::Debug {
    /// The source's name in flags, logs and metrics: `file`, `kubernetes`, `etcd`.
    fn kind(&self) -> &'static str;

    /// Checks, without changing anything anywhere, what can be checked locally before the
    /// gateway touches the host: paths exist and have the right type, certificates load,
    /// URLs parse. Not reachability: a broker that is down must not stop a gateway that can
    /// adopt working tunnels.
    async fn preflight(&self) -> Result<(), SourceError> {
        Ok(())
    }

    /// The stream of events (see [`SourceEvent`]); called once. It ends only when the source
    /// is closed for good; transient failures are retried inside, with backoff, and reported
    /// as [`SourceEvent::Health`]. The stream must not block the runtime (file reads and
    /// parsing-free work only; no parsing of object bytes, which is admission's). The consumer
    /// may leave the stream unpolled for a while and await [`publish`](Self::publish) or
    /// [`withdraw`](Self::withdraw) meanwhile: a stream must not hold, across a suspension,
    /// anything those need (a source whose watch writes, as etcd's does, runs it in a task).
    fn watch(&self) -> BoxStream<'static, SourceEvent>;

    /// Creates or replaces the local cluster's Endpoint. Idempotent, and cheap when nothing
    /// changed (rewriting identical content would wake every other gateway).
    async fn publish(&self, local: &Endpoint) -> Result<(), SourceError>;

    /// Removes the local cluster's Endpoint (`wgcable leave`): other gateways drop their
    /// tunnels to this cluster.
    async fn withdraw(&self, local: &Endpoint) -> Result<(), SourceError>;

    /// What the source did that an operator may want to count, as (operation, total since
    /// the start), operations named by short lowercase words: exported as
    /// `wgcable_broker_operations_total{broker,operation}`. Totals never decrease.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The key at which [`publish`](Self::publish) puts `local`, when the source knows it.
    /// Admission treats the object there as ours: it is compared with what was published (and
    /// republished when it differs), never admitted as a remote; every other object claiming
    /// the local cluster is refused. `local` is given because some keys derive from it (a
    /// Kubernetes Endpoint is named after its cable name, which carries the private IP).
    fn own_key(&self, _local: &Endpoint) -> Option<ObjectKey> {
        None
    }

    /// Reports the gateway's status (see [`GatewayReport`]).
    async fn report(&self, _report: &GatewayReport) -> Result<(), SourceError> {
        Ok(())
    }

    /// Tells the source this gateway's role changed (a source that syncs objects, like the
    /// Kubernetes broker syncer, does so only while leading).
    async fn set_role(&self, _role: &Role) {}

    /// The gateway is stopping (a source may remove what describes a running gateway, such
    /// as its Gateway object). The local Endpoint stays published: a restart is not a leave.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_objects_never_print_their_bytes() {
        let raw = RawObject {
            key: ObjectKey("a.yaml".into()),
            bound_cluster: Some("a".into()),
            format: Format::Yaml,
            bytes: b"private-key-material".to_vec(),
            created: None,
            version: None,
        };
        let text = format!("{raw:?}");
        assert!(!text.contains("private-key-material"), "{text}");
        assert!(text.contains("<20 bytes>"), "{text}");
    }
}
