//! The broker syncer: what Submariner's datastore syncer (admiral's broker syncer) does inside
//! the gateway, while this gateway leads.
//!
//! * The local Endpoint and Cluster exist in the local namespace and, labelled
//!   `submariner-io/clusterID=<local id>`, in the broker namespace.
//! * Other local Endpoints of our own cluster id (a stale one from another node, an old cable
//!   name) are deleted, locally and in the broker.
//! * Broker Endpoints and Clusters with a *foreign* clusterID label are copied into the local
//!   namespace (label kept); one whose label or `spec.cluster_id` claims the local cluster id is
//!   never imported. A copy whose original left the broker is deleted.
//!
//! It is level-triggered, like a controller: four watchers (Endpoints and Clusters, local and
//! broker) keep reflector stores; after any change, and every [`RESYNC`], the stores are
//! compared with what should be and only the differences are written. A write that fails is
//! retried at the next pass; nothing already in place is removed because a server is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Resource;
use serde_json::{json, Value};
use wgcable_broker::SourceEvent;

use crate::resources::{Cluster, Endpoint, Raw, CLUSTER_ID_LABEL};
use crate::source::{Desired, Inner};
use crate::Error;

/// How often the syncer compares everything even without a change.
pub const RESYNC: Duration = Duration::from_secs(30);

/// One object in a store: what the syncer decides on, and the JSON as the server returned it.
#[derive(Clone, Debug)]
struct Item {
    label: Option<String>,
    spec_cluster: Option<String>,
    value: Value,
}

impl<K> From<&Raw<K>> for Item {
    fn from(raw: &Raw<K>) -> Self {
        Item {
            label: raw.label(CLUSTER_ID_LABEL).map(str::to_owned),
            spec_cluster: raw.spec_cluster_id().map(str::to_owned),
            value: raw.value.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    LocalEndpoints,
    LocalClusters,
    BrokerEndpoints,
    BrokerClusters,
}

#[derive(Default)]
struct Store {
    items: BTreeMap<String, Item>,
    /// Filled during a (re)list, swapped in at its end.
    pending: Option<BTreeMap<String, Item>>,
    ready: bool,
}

impl Store {
    fn apply(&mut self, event: Event<(String, Item)>) {
        match event {
            Event::Init => self.pending = Some(BTreeMap::new()),
            Event::InitApply((name, item)) => {
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, item);
            }
            Event::InitDone => {
                self.items = self.pending.take().unwrap_or_default();
                self.ready = true;
            }
            Event::Apply((name, item)) => {
                self.items.insert(name, item);
            }
            Event::Delete((name, _)) => {
                self.items.remove(&name);
            }
        }
    }
}

type Change = (Which, Result<Event<(String, Item)>, String>);

fn watch_store<K>(client: kube::Client, namespace: &str, which: Which) -> BoxStream<'static, Change>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + 'static,
    Raw<K>: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let api: Api<Raw<K>> = Api::namespaced(client, namespace);
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let item = |raw: Raw<K>| (raw.name().to_owned(), Item::from(&raw));
            let event = match event {
                Ok(Event::Init) => Ok(Event::Init),
                Ok(Event::InitApply(raw)) => Ok(Event::InitApply(item(raw))),
                Ok(Event::InitDone) => Ok(Event::InitDone),
                Ok(Event::Apply(raw)) => Ok(Event::Apply(item(raw))),
                Ok(Event::Delete(raw)) => Ok(Event::Delete(item(raw))),
                Err(e) => Err(crate::error_chain(&e)),
            };
            (which, event)
        })
        .boxed()
}

/// The syncer as a stream of health changes; it works only while this gateway leads.
pub(crate) fn run(inner: Arc<Inner>) -> BoxStream<'static, SourceEvent> {
    async_stream::stream! {
        let mut role = inner.role.subscribe();
        let mut desired = inner.desired.subscribe();
        loop {
            // Nothing to sync before this gateway leads and has published its Endpoint.
            while !inner.leading() || desired.borrow().endpoint.is_none() {
                tokio::select! {
                    changed = role.changed() => if changed.is_err() { return; },
                    changed = desired.changed() => if changed.is_err() { return; },
                }
            }
            let ns = inner.config.namespace.clone();
            let mut streams = vec![
                watch_store::<Endpoint>(inner.local.clone(), &ns, Which::LocalEndpoints),
                watch_store::<Cluster>(inner.local.clone(), &ns, Which::LocalClusters),
            ];
            if let Some((broker, broker_ns)) = &inner.broker {
                streams.push(watch_store::<Endpoint>(broker.clone(), broker_ns, Which::BrokerEndpoints));
                streams.push(watch_store::<Cluster>(broker.clone(), broker_ns, Which::BrokerClusters));
            }
            let mut changes = futures::stream::select_all(streams);
            let mut stores: BTreeMap<&'static str, Store> = BTreeMap::new();
            let mut tick = tokio::time::interval(RESYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch_error: Option<String> = None;
            let mut failing: Option<Which> = None;
            let mut probe = tokio::time::interval(crate::source::PROBE_INTERVAL);
            loop {
                let mut dirty = false;
                tokio::select! {
                    // A watch that reconnects quietly yields nothing to tell recovery by.
                    _ = probe.tick(), if failing.is_some() => {
                        if probe_side(&inner, failing).await {
                            failing = None;
                            watch_error = None;
                            if let Some(h) = inner.set_health(crate::source::HealthPart::Syncer, None) {
                                yield SourceEvent::Health(h);
                            }
                            dirty = true;
                        }
                    }
                    change = changes.next() => {
                        let Some(first) = change else { break };
                        // Take in whatever else is already there before one pass over
                        // everything (a relist of 1,000 objects is one pass, not 1,000).
                        let mut batch = vec![first];
                        while let Some(Some(more)) = changes.next().now_or_never() {
                            batch.push(more);
                        }
                        for (which, change) in batch {
                            match change {
                                Ok(event) => {
                                    stores.entry(store_name(which)).or_default().apply(event);
                                    failing = None;
                                    if watch_error.take().is_some() {
                                        if let Some(h) = inner.set_health(crate::source::HealthPart::Syncer, None) {
                                            yield SourceEvent::Health(h);
                                        }
                                    }
                                    dirty = true;
                                }
                                Err(message) => {
                                    let message = format!("broker sync: watching {}: {message}", store_name(which));
                                    if watch_error.as_deref() != Some(message.as_str()) {
                                        tracing::warn!(error = %message, "broker sync watch failed; retrying with backoff");
                                        watch_error = Some(message.clone());
                                        failing = Some(which);
                                        if let Some(h) = inner.set_health(crate::source::HealthPart::Syncer, Some(message)) {
                                            yield SourceEvent::Health(h);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    changed = role.changed() => {
                        if changed.is_err() || !inner.leading() {
                            break;
                        }
                    }
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        dirty = true;
                    }
                    _ = tick.tick() => dirty = true,
                }
                let expected = if inner.broker.is_some() { 4 } else { 2 };
                let ready = stores.values().filter(|s| s.ready).count() == expected;
                if dirty && ready && watch_error.is_none() {
                    let want = desired.borrow().clone();
                    let problem = reconcile(&inner, &mut stores, &want).await.err();
                    let problem = problem.map(|e| format!("broker sync: {}", crate::error_chain(&e)));
                    if let Some(p) = &problem {
                        tracing::warn!(error = %p, "broker sync pass failed; retrying at the next pass");
                    }
                    if let Some(h) = inner.set_health(crate::source::HealthPart::Syncer, problem) {
                        yield SourceEvent::Health(h);
                    }
                }
            }
            // Not leading any more (or the watches ended): what the syncer reported no
            // longer applies.
            if let Some(h) = inner.set_health(crate::source::HealthPart::Syncer, None) {
                yield SourceEvent::Health(h);
            }
        }
    }
    .boxed()
}

/// Whether the server behind `which` answers again.
async fn probe_side(inner: &Inner, which: Option<Which>) -> bool {
    let (client, ns) = match (which, &inner.broker) {
        (Some(Which::BrokerEndpoints | Which::BrokerClusters), Some((broker, ns))) => {
            (broker.clone(), ns.clone())
        }
        _ => (inner.local.clone(), inner.config.namespace.clone()),
    };
    crate::source::reachable(&Api::<Raw<Endpoint>>::namespaced(client, &ns)).await
}

fn store_name(which: Which) -> &'static str {
    match which {
        Which::LocalEndpoints => "local Endpoints",
        Which::LocalClusters => "local Clusters",
        Which::BrokerEndpoints => "broker Endpoints",
        Which::BrokerClusters => "broker Clusters",
    }
}

fn items<'a>(
    stores: &'a BTreeMap<&'static str, Store>,
    which: Which,
) -> impl Iterator<Item = (&'a String, &'a Item)> {
    stores
        .get(store_name(which))
        .into_iter()
        .flat_map(|s| s.items.iter())
}

fn lookup<'a>(
    stores: &'a BTreeMap<&'static str, Store>,
    which: Which,
    name: &str,
) -> Option<&'a Item> {
    stores
        .get(store_name(which))
        .and_then(|s| s.items.get(name))
}

/// One pass: writes only what differs. Every difference is attempted; the first error is
/// returned after the others were tried. What a write leaves is put into the stores at once
/// (as a controller's cache is), so the next pass does not repeat a write whose watch event
/// has not arrived yet.
async fn reconcile(
    inner: &Inner,
    stores: &mut BTreeMap<&'static str, Store>,
    desired: &Desired,
) -> Result<(), Error> {
    let me = inner.config.cluster_id.clone();
    let me = me.as_str();
    let ns = inner.config.namespace.clone();
    let ns = ns.as_str();
    let mut pass = Pass {
        stores,
        first_error: None,
    };
    let own_endpoint = desired
        .endpoint
        .as_ref()
        .and_then(|e| e.metadata.name.clone());
    let own_cluster = desired
        .cluster
        .as_ref()
        .and_then(|c| c.metadata.name.clone());
    let local = (&inner.local, ns);

    // The local namespace: our objects, and nobody else's Endpoint of our cluster id.
    if let (Some(endpoint), Some(name)) = (&desired.endpoint, &own_endpoint) {
        pass.ensure::<Endpoint>(local, Which::LocalEndpoints, name, to_value(endpoint)?)
            .await;
    }
    if let (Some(cluster), Some(name)) = (&desired.cluster, &own_cluster) {
        pass.ensure::<Cluster>(local, Which::LocalClusters, name, to_value(cluster)?)
            .await;
    }
    if own_endpoint.is_some() {
        let stale = pass.names(Which::LocalEndpoints, |name, item| {
            Some(name) != own_endpoint.as_deref()
                && (item.label.as_deref() == Some(me)
                    || (item.label.is_none() && item.spec_cluster.as_deref() == Some(me)))
        });
        for name in stale {
            tracing::info!(endpoint = %name, "deleting another local Endpoint of this cluster");
            pass.delete::<Endpoint>(local, Which::LocalEndpoints, &name)
                .await;
        }
    }

    let Some((broker, broker_ns)) = &inner.broker else {
        return pass.first_error.map_or(Ok(()), Err);
    };
    let remote = (broker, broker_ns.as_str());

    // The broker: our objects, labelled; nothing else of ours.
    if let (Some(endpoint), Some(name)) = (&desired.endpoint, &own_endpoint) {
        let value = exported(to_value(endpoint)?, ns);
        pass.ensure::<Endpoint>(remote, Which::BrokerEndpoints, name, value)
            .await;
        let stale = pass.names(Which::BrokerEndpoints, |n, item| {
            item.label.as_deref() == Some(me) && Some(n) != own_endpoint.as_deref()
        });
        for name in stale {
            tracing::info!(endpoint = %name, "deleting a stale Endpoint of this cluster from the broker");
            pass.delete::<Endpoint>(remote, Which::BrokerEndpoints, &name)
                .await;
        }
    }
    if let (Some(cluster), Some(name)) = (&desired.cluster, &own_cluster) {
        let value = exported(to_value(cluster)?, ns);
        pass.ensure::<Cluster>(remote, Which::BrokerClusters, name, value)
            .await;
    }

    // Imports: foreign objects from the broker into the local namespace, and away again.
    for (broker_which, local_which) in [
        (Which::BrokerEndpoints, Which::LocalEndpoints),
        (Which::BrokerClusters, Which::LocalClusters),
    ] {
        let mut imports = Vec::new();
        for (name, item) in items(pass.stores, broker_which) {
            let foreign = item.label.as_deref().is_some_and(|l| l != me);
            let claims_us = item.spec_cluster.as_deref() == Some(me);
            if !foreign || claims_us {
                if foreign {
                    tracing::warn!(object = %name, "a broker object labelled with another cluster claims this cluster's id; not imported");
                }
                continue;
            }
            // Never overwrite an object of our own (or someone else's unlabelled one).
            let local_item = lookup(pass.stores, local_which, name);
            if local_item.is_some_and(|l| l.label.as_deref() != item.label.as_deref()) {
                continue;
            }
            imports.push((name.clone(), import_copy(name, &item.value)));
        }
        let wanted: std::collections::BTreeSet<String> =
            imports.iter().map(|(name, _)| name.clone()).collect();
        for (name, copy) in imports {
            match local_which {
                Which::LocalEndpoints => {
                    pass.ensure::<Endpoint>(local, local_which, &name, copy)
                        .await
                }
                _ => {
                    pass.ensure::<Cluster>(local, local_which, &name, copy)
                        .await
                }
            }
        }
        let gone = pass.names(local_which, |name, item| {
            item.label.as_deref().is_some_and(|l| l != me) && !wanted.contains(name)
        });
        for name in gone {
            match local_which {
                Which::LocalEndpoints => pass.delete::<Endpoint>(local, local_which, &name).await,
                _ => pass.delete::<Cluster>(local, local_which, &name).await,
            }
        }
    }
    pass.first_error.map_or(Ok(()), Err)
}

/// One reconcile pass's writes, keeping the stores up to date with them.
struct Pass<'a> {
    stores: &'a mut BTreeMap<&'static str, Store>,
    first_error: Option<Error>,
}

impl Pass<'_> {
    fn names(&self, which: Which, keep: impl Fn(&str, &Item) -> bool) -> Vec<String> {
        items(self.stores, which)
            .filter(|(name, item)| keep(name, item))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn note(&mut self, error: Error, name: &str) {
        tracing::warn!(object = %name, error = %crate::error_chain(&error), "a broker sync write failed");
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    async fn ensure<K>(
        &mut self,
        (client, ns): (&kube::Client, &str),
        which: Which,
        name: &str,
        desired: Value,
    ) where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
        Raw<K>: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        let current = lookup(self.stores, which, name).map(|i| i.value.clone());
        match ensure_value::<K>(client, ns, desired, current.as_ref()).await {
            Ok(Some(written)) => {
                let raw: Raw<K> = Raw::from_value(written);
                self.stores
                    .entry(store_name(which))
                    .or_default()
                    .items
                    .insert(name.to_owned(), Item::from(&raw));
            }
            Ok(None) => {}
            Err(e) => self.note(e, name),
        }
    }

    async fn delete<K>(&mut self, (client, ns): (&kube::Client, &str), which: Which, name: &str)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        match delete_if_present(&Api::<K>::namespaced(client.clone(), ns), name).await {
            Ok(()) => {
                if let Some(store) = self.stores.get_mut(store_name(which)) {
                    store.items.remove(name);
                }
            }
            Err(e) => self.note(e, name),
        }
    }
}

fn to_value<T: serde::Serialize>(object: &T) -> Result<Value, Error> {
    serde_json::to_value(object).map_err(|source| Error::Encode {
        what: "an object to sync",
        source,
    })
}

/// An object as copied to the broker: labelled, as admiral's federator labels it, with the
/// namespace it came from besides the cluster id.
fn exported(mut value: Value, namespace: &str) -> Value {
    if !value["metadata"]["labels"].is_object() {
        value["metadata"]["labels"] = json!({});
    }
    value["metadata"]["labels"][ORIGINATING_NAMESPACE_LABEL] = json!(namespace);
    value
}

/// The label admiral's federator adds beside the cluster id.
pub const ORIGINATING_NAMESPACE_LABEL: &str = "submariner-io/originatingNamespace";

/// The local copy of a broker object: its name and labels, and everything else but metadata
/// (and status) as it is.
fn import_copy(name: &str, broker: &Value) -> Value {
    let mut copy = serde_json::Map::new();
    if let Value::Object(fields) = broker {
        for (key, value) in fields {
            if key != "metadata" && key != "status" {
                copy.insert(key.clone(), value.clone());
            }
        }
    }
    let labels = broker
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    copy.insert("metadata".into(), json!({"name": name, "labels": labels}));
    Value::Object(copy)
}

/// Whether `current` already holds what `desired` says: every top-level field but metadata
/// equal, and every desired label present with its value.
fn same_content(current: &Value, desired: &Value) -> bool {
    let Value::Object(want) = desired else {
        return false;
    };
    let fields_equal = want
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "apiVersion" | "kind"))
        .all(|(k, v)| current.get(k) == Some(v));
    let labels_present = desired
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_none_or(|labels| {
            labels
                .iter()
                .all(|(k, v)| current.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        });
    fields_equal && labels_present
}

/// Creates `desired` or brings the existing object to it; `current` is the object as last
/// seen (from a store), `None` when it is not known to exist. Returns the object as written,
/// `None` when nothing needed writing.
///
/// A stale `current` costs one `409 Conflict` and a fresh read; an object that appeared
/// meanwhile costs one `409 AlreadyExists` and a read. Three attempts, then the conflict is
/// returned (the next pass tries again).
pub(crate) async fn ensure_value<K>(
    client: &kube::Client,
    namespace: &str,
    desired: Value,
    current: Option<&Value>,
) -> Result<Option<Value>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    Raw<K>: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let api: Api<Raw<K>> = Api::namespaced(client.clone(), namespace);
    let name = desired
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let what = format!("{} {namespace}/{name}", K::kind(&()));
    let mut current = current.cloned();
    let mut last_error = None;
    for _attempt in 0..3 {
        match current.take() {
            None => match api
                .create(&PostParams::default(), &Raw::from_value(desired.clone()))
                .await
            {
                Ok(written) => return Ok(Some(written.value)),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    current = read(&api, &name, &what).await?;
                    last_error = Some(Error::Kube {
                        action: format!("creating {what}"),
                        source: kube::Error::Api(s),
                    });
                }
                Err(source) => {
                    return Err(Error::Kube {
                        action: format!("creating {what}"),
                        source,
                    })
                }
            },
            Some(existing) => {
                if same_content(&existing, &desired) {
                    return Ok(None);
                }
                let updated = updated_object(&existing, &desired);
                match api
                    .replace(&name, &PostParams::default(), &Raw::from_value(updated))
                    .await
                {
                    Ok(written) => return Ok(Some(written.value)),
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                        current = read(&api, &name, &what).await?;
                        last_error = Some(Error::Kube {
                            action: format!("updating {what}"),
                            source: kube::Error::Api(s),
                        });
                    }
                    Err(source) => {
                        return Err(Error::Kube {
                            action: format!("updating {what}"),
                            source,
                        })
                    }
                }
            }
        }
    }
    Err(last_error.unwrap_or(Error::Config {
        message: format!("{what} kept changing while being written"),
    }))
}

/// `existing` with `desired`'s fields and labels (and annotations) put in, metadata otherwise
/// kept (resourceVersion included, for the conflict check).
pub(crate) fn updated_object(existing: &Value, desired: &Value) -> Value {
    let mut updated = existing.clone();
    if let (Value::Object(target), Value::Object(want)) = (&mut updated, desired) {
        for (key, value) in want {
            if key != "metadata" {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    for part in ["labels", "annotations"] {
        if let Some(Value::Object(want)) = desired.pointer(&format!("/metadata/{part}")) {
            if !updated["metadata"][part].is_object() {
                updated["metadata"][part] = json!({});
            }
            for (k, v) in want {
                updated["metadata"][part][k] = v.clone();
            }
        }
    }
    updated
}

async fn read<K>(api: &Api<Raw<K>>, name: &str, what: &str) -> Result<Option<Value>, Error>
where
    Raw<K>: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    api.get_opt(name)
        .await
        .map(|o| o.map(|raw| raw.value))
        .map_err(Error::kube(format!("reading {what}")))
}

/// Deletes an object; one already gone is fine.
pub(crate) async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting {} {name}", K::kind(&())),
            source,
        }),
    }
}

/// Creates or updates a typed object (the local Endpoint and Cluster on `publish`).
pub(crate) async fn ensure<K>(
    client: &kube::Client,
    namespace: &str,
    object: &K,
) -> Result<Option<Value>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + serde::Serialize,
    Raw<K>: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let value = to_value(object)?;
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let raw: Api<Raw<K>> = Api::namespaced(client.clone(), namespace);
    let current = read(&raw, name, &format!("{} {namespace}/{name}", K::kind(&()))).await?;
    ensure_value::<K>(client, namespace, value, current.as_ref()).await
}
