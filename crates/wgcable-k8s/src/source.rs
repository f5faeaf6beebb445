//! The Kubernetes endpoint source: Endpoints in the gateway's namespace, watched with
//! kube-runtime's watcher and handed over as raw JSON; the local Endpoint and Cluster
//! published there; the broker syncer and the Gateway status writer driven alongside.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use tokio::sync::watch;
use wgcable_broker::{
    EndpointSource, Format, GatewayReport, ObjectKey, RawObject, Role, SourceError, SourceEvent,
    SourceHealth,
};

use crate::resources::{Cluster, ClusterSpec, Endpoint, Raw, CLUSTER_ID_LABEL};
use crate::KubernetesConfig;

/// The largest object handed over whole: admission's own size limit
/// ([`wgcable_broker::admission::AdmissionConfig`]'s `limits.max_bytes`). More is cut to this
/// plus one byte, so admission sees an oversized object as oversized (the API server itself
/// stores up to ~1.5 MiB).
pub fn max_object_bytes() -> usize {
    wgcable_broker::admission::AdmissionConfig::default()
        .limits
        .max_bytes
}

/// What the source, the syncer and the status writer share.
pub(crate) struct Inner {
    pub(crate) local: kube::Client,
    pub(crate) broker: Option<(kube::Client, String)>,
    pub(crate) config: KubernetesConfig,
    /// `None` until the gateway says (`set_role`): a gateway without an elector is the leader.
    pub(crate) role: watch::Sender<Option<Role>>,
    pub(crate) desired: watch::Sender<Desired>,
    pub(crate) gateway: Mutex<GatewayState>,
    /// What is wrong, per part of the source; healthy when empty.
    pub(crate) health: Mutex<BTreeMap<HealthPart, String>>,
    /// The local Endpoint's name, once `own_key` or `publish` learnt it.
    pub(crate) own_name: Mutex<Option<String>>,
}

/// The parts of the source whose health is reported together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HealthPart {
    Endpoints,
    Syncer,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("namespace", &self.config.namespace)
            .field("cluster_id", &self.config.cluster_id)
            .field("broker", &self.broker.as_ref().map(|(_, ns)| ns))
            .finish_non_exhaustive()
    }
}

/// What this gateway publishes (set by `publish`, read by the syncer).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Desired {
    pub(crate) endpoint: Option<Endpoint>,
    pub(crate) cluster: Option<Cluster>,
}

#[derive(Debug, Default)]
pub(crate) struct GatewayState {
    /// The name of the Gateway object last written, to delete it on shutdown.
    pub(crate) name: Option<String>,
}

impl Inner {
    pub(crate) fn leading(&self) -> bool {
        self.role.borrow().as_ref().is_none_or(Role::is_leader)
    }

    pub(crate) fn gateway_state(&self) -> MutexGuard<'_, GatewayState> {
        self.gateway
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one part's health; returns the source's health when that changed.
    pub(crate) fn set_health(
        &self,
        part: HealthPart,
        problem: Option<String>,
    ) -> Option<SourceHealth> {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = combined(&health);
        match problem {
            Some(p) => health.insert(part, p),
            None => health.remove(&part),
        };
        let after = combined(&health);
        (before != after).then_some(after)
    }

    /// The local Endpoint's name, once `own_key` or `publish` learnt it.
    pub(crate) fn own_endpoint_name(&self) -> Option<String> {
        self.own_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_own_name(&self, name: Option<String>) {
        *self
            .own_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = name;
    }
}

fn combined(health: &BTreeMap<HealthPart, String>) -> SourceHealth {
    if health.is_empty() {
        SourceHealth::Healthy
    } else {
        SourceHealth::Unhealthy(health.values().cloned().collect::<Vec<_>>().join("; "))
    }
}

/// Submariner's Endpoints through the Kubernetes API.
#[derive(Clone, Debug)]
pub struct KubernetesSource {
    pub(crate) inner: Arc<Inner>,
}

impl KubernetesSource {
    /// A source over given clients (`broker`: its client and namespace); [`crate::connect`]
    /// builds them from the configuration.
    pub fn new(
        local: kube::Client,
        broker: Option<(kube::Client, String)>,
        config: KubernetesConfig,
    ) -> Self {
        KubernetesSource {
            inner: Arc::new(Inner {
                local,
                broker,
                config,
                role: watch::Sender::new(None),
                desired: watch::Sender::new(Desired::default()),
                gateway: Mutex::new(GatewayState::default()),
                health: Mutex::new(BTreeMap::new()),
                own_name: Mutex::new(None),
            }),
        }
    }

    /// The Cluster object this gateway publishes for its cluster.
    pub fn local_cluster(&self) -> Cluster {
        let c = &self.inner.config;
        let mut cluster = Cluster::new(ClusterSpec {
            cluster_id: c.cluster_id.clone(),
            color_codes: vec!["blue".to_owned()],
            service_cidr: c.service_cidrs.clone(),
            cluster_cidr: c.cluster_cidrs.clone(),
            global_cidr: c.global_cidrs.clone(),
        });
        cluster.metadata.labels =
            Some([(CLUSTER_ID_LABEL.to_owned(), c.cluster_id.clone())].into());
        cluster
    }
}

/// The local Endpoint as published: Submariner's name, the clusterID label, our namespace.
pub(crate) fn endpoint_object(local: &wgcable_api::Endpoint, cluster_id: &str) -> Endpoint {
    let mut endpoint = Endpoint::new(local.spec.clone());
    endpoint.metadata.labels = Some([(CLUSTER_ID_LABEL.to_owned(), cluster_id.to_owned())].into());
    endpoint
}

#[async_trait]
impl EndpointSource for KubernetesSource {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn preflight(&self) -> Result<(), SourceError> {
        self.inner
            .config
            .lease
            .validate()
            .map_err(SourceError::from)
    }

    fn watch(&self) -> BoxStream<'static, SourceEvent> {
        let endpoints = endpoint_events(self.inner.clone());
        let syncer = crate::syncer::run(self.inner.clone());
        futures::stream::select(endpoints, syncer).boxed()
    }

    async fn publish(&self, local: &wgcable_api::Endpoint) -> Result<(), SourceError> {
        let inner = &self.inner;
        let endpoint = endpoint_object(local, &inner.config.cluster_id);
        inner.set_own_name(endpoint.metadata.name.clone());
        let cluster = self.local_cluster();
        inner.desired.send_if_modified(|d| {
            let next = Desired {
                endpoint: Some(endpoint.clone()),
                cluster: Some(cluster.clone()),
            };
            let changed = *d != next;
            *d = next;
            changed
        });
        if !inner.leading() {
            return Ok(());
        }
        let ns = &inner.config.namespace;
        crate::syncer::ensure(&inner.local, ns, &endpoint)
            .await
            .map_err(SourceError::from)?;
        crate::syncer::ensure(&inner.local, ns, &cluster)
            .await
            .map_err(SourceError::from)?;
        Ok(())
    }

    /// Deletes every Endpoint labelled with the local cluster id, in the local namespace and
    /// (with a broker) in the broker namespace: `wgcable leave` knows the cluster id, not the
    /// private IP the object's name carries, and a cluster that leaves takes along the
    /// Endpoints of its other gateway nodes too (stale ones included). Each deletion is logged
    /// by namespace and name. `local` only names the cluster.
    async fn withdraw(&self, _local: &wgcable_api::Endpoint) -> Result<(), SourceError> {
        let inner = &self.inner;
        inner.desired.send_replace(Desired::default());
        let mut places = vec![(inner.local.clone(), inner.config.namespace.clone())];
        if let Some((broker, ns)) = &inner.broker {
            places.push((broker.clone(), ns.clone()));
        }
        let selector = format!("{CLUSTER_ID_LABEL}={}", inner.config.cluster_id);
        for (client, ns) in places {
            let api: Api<Raw<Endpoint>> = Api::namespaced(client, &ns);
            let listed = api
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map_err(|source| crate::Error::Kube {
                    action: format!("listing the Endpoints labelled {selector} in namespace {ns}"),
                    source,
                })
                .map_err(SourceError::from)?;
            for object in listed.items {
                let name = object.name().to_owned();
                if name.is_empty() {
                    continue;
                }
                crate::syncer::delete_if_present(&api, &name)
                    .await
                    .map_err(SourceError::from)?;
                // Names are DNS-1123 (the API server refuses anything else): safe to print.
                tracing::info!(namespace = %ns, name = %name, "deleted this cluster's Endpoint");
            }
        }
        Ok(())
    }

    /// `<namespace>/<name>` of `local` as [`publish`](EndpointSource::publish) names it.
    fn own_key(&self, local: &wgcable_api::Endpoint) -> Option<ObjectKey> {
        let name = endpoint_object(local, &self.inner.config.cluster_id)
            .metadata
            .name;
        self.inner.set_own_name(name.clone());
        name.map(|name| ObjectKey(format!("{}/{name}", self.inner.config.namespace)))
    }

    async fn report(&self, report: &GatewayReport) -> Result<(), SourceError> {
        crate::status::write(&self.inner, report)
            .await
            .map_err(SourceError::from)
    }

    async fn set_role(&self, role: &Role) {
        self.inner.role.send_replace(Some(role.clone()));
    }

    async fn shutdown(&self) {
        crate::status::remove_own(&self.inner).await;
    }
}

/// `namespace/name`: names are DNS-1123 (the API server refuses anything else), so safe to
/// print.
fn key_of<K>(raw: &Raw<K>) -> ObjectKey {
    ObjectKey(format!(
        "{}/{}",
        raw.metadata.namespace.as_deref().unwrap_or(""),
        raw.name()
    ))
}

/// The Endpoints of the local namespace as source events.
///
/// kube-runtime's watcher lists (in pages) and then watches from the list's resourceVersion,
/// resuming from the last version seen when a watch ends, relisting when the server answers
/// 410 Gone; its backoff paces retries. A relist (`Init` .. `InitDone`) becomes a
/// [`SourceEvent::Snapshot`]. Every `resync_interval` the watcher is restarted, so a full list
/// repairs anything a watch could have missed.
///
/// Endpoints labelled with our cluster id other than our own are not handed over (see
/// [`handover`]); an object that *becomes* one is handed over as a deletion. Everything else,
/// our own published object included, is handed over untouched: whether it is acceptable
/// (malformed, an impostor claiming our cluster id under another label) is admission's
/// decision.
fn endpoint_events(inner: Arc<Inner>) -> BoxStream<'static, SourceEvent> {
    let api: Api<Raw<Endpoint>> = Api::namespaced(inner.local.clone(), &inner.config.namespace);
    let resync = inner.config.resync_interval.max(Duration::from_secs(1));
    async_stream::stream! {
        // What has been handed over (and not yet withdrawn), to turn "became ours" into a
        // deletion and to know what a snapshot replaces.
        let mut delivered: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut healthy = true;
        loop {
            let mut events = watcher::watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .boxed();
            let restart = tokio::time::sleep(resync);
            tokio::pin!(restart);
            let mut buffer: Option<Vec<RawObject>> = None;
            // A watch that reconnects quietly yields nothing to tell recovery by; while
            // unhealthy, a cheap read says when the server answers again.
            let mut probe = tokio::time::interval(PROBE_INTERVAL);
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = &mut restart => break,
                    _ = probe.tick(), if !healthy => {
                        if reachable(&api).await {
                            healthy = true;
                            if let Some(h) = inner.set_health(HealthPart::Endpoints, None) {
                                yield SourceEvent::Health(h);
                            }
                        }
                        continue;
                    }
                };
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        if healthy {
                            healthy = false;
                            tracing::warn!(error = %crate::error_chain(&e), "watching Endpoints failed; retrying with backoff");
                            let problem = format!(
                                "watching Endpoints in namespace {}: {}",
                                inner.config.namespace,
                                crate::error_chain(&e)
                            );
                            if let Some(h) = inner.set_health(HealthPart::Endpoints, Some(problem)) {
                                yield SourceEvent::Health(h);
                            }
                        }
                        continue;
                    }
                    // The watcher never ends on its own; if it did, start over.
                    None => break,
                };
                if !healthy {
                    healthy = true;
                    if let Some(h) = inner.set_health(HealthPart::Endpoints, None) {
                        yield SourceEvent::Health(h);
                    }
                }
                match event {
                    Event::Init => buffer = Some(Vec::new()),
                    Event::InitApply(obj) => {
                        if let Some(raw) = handover(&inner, &obj) {
                            buffer.get_or_insert_with(Vec::new).push(raw);
                        }
                    }
                    Event::InitDone => {
                        let objects = buffer.take().unwrap_or_default();
                        delivered = objects.iter().map(|o| o.key.clone()).collect();
                        yield SourceEvent::Snapshot(objects);
                    }
                    Event::Apply(obj) => match handover(&inner, &obj) {
                        Some(raw) => {
                            delivered.insert(raw.key.clone());
                            yield SourceEvent::Apply(raw);
                        }
                        None => {
                            let key = key_of(&obj);
                            if delivered.remove(&key) {
                                yield SourceEvent::Delete(key);
                            }
                        }
                    },
                    Event::Delete(obj) => {
                        let key = key_of(&obj);
                        if delivered.remove(&key) {
                            yield SourceEvent::Delete(key);
                        }
                    }
                }
            }
        }
    }
    .boxed()
}

/// How often an unhealthy part checks whether its server answers again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the server answers a minimal list of `api`'s resource.
pub(crate) async fn reachable<K>(api: &Api<K>) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&kube::api::ListParams::default().limit(1))
        .await
        .is_ok()
}

/// The object as handed to admission, or `None` when it is a sibling of our own (or has no
/// name, which no API server produces).
///
/// The object at [`EndpointSource::own_key`] is handed over: admission compares it with what
/// was published and asks for a republish when it differs or is gone. Other Endpoints labelled
/// with our cluster id are siblings from this cluster's other gateway nodes (the leader's, seen
/// by a standby, or a stale one the leader deletes): not remote endpoints and not impostors, so
/// they are not handed over (admission would count them as refusals on every standby).
fn handover(inner: &Inner, obj: &Raw<Endpoint>) -> Option<RawObject> {
    if obj.name().is_empty() {
        tracing::warn!("an Endpoint without a name was listed; skipped");
        return None;
    }
    let label = obj.label(CLUSTER_ID_LABEL);
    let own = inner.own_endpoint_name().as_deref() == Some(obj.name());
    if label == Some(inner.config.cluster_id.as_str()) && !own {
        return None;
    }
    let mut bytes = match serde_json::to_vec(&obj.value) {
        Ok(bytes) => bytes,
        Err(_) => return None,
    };
    bytes.truncate(max_object_bytes().saturating_add(1));
    Some(RawObject {
        key: key_of(obj),
        bound_cluster: label.map(str::to_owned),
        format: Format::Json,
        bytes,
        created: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_second()).ok()),
        version: obj.metadata.resource_version.clone(),
    })
}
