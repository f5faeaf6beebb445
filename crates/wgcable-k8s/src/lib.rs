//! Submariner's Kubernetes side of wgcable: what a gateway reads and writes through the
//! Kubernetes API to be a drop-in `submariner-gateway`.
//!
//! * [`resources`]: the `submariner.io/v1` Endpoint, Cluster and Gateway as kube-rs types, on
//!   wgcable-api's spec and status types; [`crd`] generates their CRDs (checked in as
//!   `deploy/crds.yaml`).
//! * [`KubernetesSource`]: the [`wgcable_broker::EndpointSource`] over Endpoints in the
//!   gateway's namespace (kube-runtime's watcher: paged lists, resumed watches, relist on
//!   410 Gone, backoff, periodic resync), handing each object over as the JSON the API server
//!   returned; while leading it also runs the broker syncer ([`syncer`]) and it writes the
//!   Gateway status ([`status`]).
//! * [`LeaseElector`]: the [`wgcable_broker::LeaderElector`] on Lease
//!   `submariner-gateway-lock` with client-go's LeaseLock semantics; it labels the gateway pod
//!   `gateway.submariner.io/status=active|passive`.
//! * [`KubernetesConfig`]: everything above, read from a Submariner gateway pod's environment.
//! * `testing` (feature): an in-memory API server behind kube's real `Client`.
//!
//! What this crate must NOT know about: devices, netlink, WireGuard peers, metrics, or how an
//! Endpoint is validated (it hands objects over as bytes; admission is wgcable-broker's).

pub mod config;
pub mod crd;
mod error;
pub mod leader;
pub mod resources;
mod source;
pub mod status;
pub mod syncer;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

pub use config::{BrokerConfig, KubernetesConfig, LeaseTimings, LocalAccess};
pub use error::Error;
pub use leader::LeaseElector;
pub use source::{max_object_bytes, KubernetesSource};

/// The source and the elector of a Kubernetes gateway, connected as `config` says (in-cluster
/// or a kubeconfig for the local cluster, `BROKER_K8S_*` for the broker).
pub async fn connect(
    config: KubernetesConfig,
) -> Result<(KubernetesSource, Arc<LeaseElector>), Error> {
    config.lease.validate()?;
    let local = config.local_client().await?;
    let broker = match &config.broker {
        Some(b) => Some((b.client().await?, b.remote_namespace.clone())),
        None => None,
    };
    let elector = Arc::new(LeaseElector::new(local.clone(), &config));
    Ok((KubernetesSource::new(local, broker, config), elector))
}

/// An error and its causes on one line: the workspace's one formatter.
pub(crate) use wgcable_api::error_chain;
