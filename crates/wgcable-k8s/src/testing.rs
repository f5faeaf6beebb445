//! An in-memory Kubernetes API server behind kube's real [`Client`], for tests.
//!
//! Requests go through kube-rs's whole client stack (URL building, query parameters, JSON
//! bodies, status errors, watch line decoding, the runtime's watcher and its backoff) into a
//! tower `Service` that answers as an API server does:
//!
//! * list with `resourceVersion`, `limit`/`continue` pages cut from one snapshot, label
//!   selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`);
//! * watch as a stream of `{"type":..., "object":...}` lines, resumed from a `resourceVersion`,
//!   closed after `timeoutSeconds`; a version older than the last compaction gets the real
//!   server's answer, an `ERROR` event with a `410 Expired` Status;
//! * create (`409 AlreadyExists`), replace (`409 Conflict` on a stale `resourceVersion`; for
//!   custom resources a missing one is refused as the real server does), JSON merge and
//!   strategic merge patch (both as RFC 7386 merge patches, which is what they mean for the
//!   maps and scalars used here), delete (`404 NotFound`); a write that changes nothing keeps
//!   the `resourceVersion` and wakes no watcher, as etcd-backed storage does;
//! * server-set metadata as a real server sets it: `uid`, `resourceVersion`,
//!   `creationTimestamp` (from a clock the test controls), `generation`, `namespace`.
//!
//! Faults are injected on purpose: failing requests with a status or as an unreachable server,
//! closing or expiring every open watch, compaction, raw (even malformed) watch lines and
//! objects stored without any validation.
//!
//! Not modelled: CRD schema validation and pruning, field selectors, admission, finalizers,
//! server-side apply, `resourceVersionMatch`, streaming lists.
//!
//! Written here rather than taken from a crate: `kube`'s own `tower-test` mock pattern scripts
//! one request/response pair at a time (no state, no watch fan-out), and no fake client crate
//! for kube 5 serves watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The response body type of the fake server.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

/// Submariner's Endpoints.
pub const ENDPOINTS: &str = "submariner.io/v1/endpoints";
/// Submariner's Clusters.
pub const CLUSTERS: &str = "submariner.io/v1/clusters";
/// Submariner's Gateways.
pub const GATEWAYS: &str = "submariner.io/v1/gateways";
/// coordination.k8s.io Leases.
pub const LEASES: &str = "coordination.k8s.io/v1/leases";
/// Core Pods.
pub const PODS: &str = "core/v1/pods";

/// How an injected fault answers.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// An HTTP error with a Kubernetes Status body (`500`, `503`, `403`, `429`...).
    Status(u16),
    /// The service fails: kube sees a transport error, as when the server is down.
    Unreachable,
}

#[derive(Clone, Debug)]
struct Fault {
    method: Option<Method>,
    resource: Option<String>,
    watch: Option<bool>,
    remaining: usize,
    kind: FaultKind,
}

/// Which requests an injected fault applies to.
#[derive(Clone, Debug, Default)]
pub struct FaultMatch {
    pub method: Option<Method>,
    /// One of the resource constants ([`ENDPOINTS`], ...).
    pub resource: Option<String>,
    /// `Some(true)`: only watch requests; `Some(false)`: every request but watches.
    pub watch: Option<bool>,
}

struct Watch {
    resource: String,
    namespace: Option<String>,
    selector: Selector,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Event {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// resource -> (namespace, name) -> object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    rv: u64,
    uid: u64,
    events: Vec<Event>,
    /// Watches from a version below this one get `410 Expired`.
    compacted_below: u64,
    watches: Vec<Watch>,
    /// continue token -> the rest of a paged list (its snapshot version, items left).
    pages: HashMap<String, (u64, VecDeque<Value>)>,
    next_token: u64,
    faults: Vec<Fault>,
    log: Vec<String>,
    now: Option<SystemTime>,
}

/// The in-memory API server. Cheap to clone; every clone and every client serve one state.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").finish_non_exhaustive()
    }
}

/// The fixed time the server's clock starts at (2026-01-01T00:00:00Z), so creation timestamps
/// are the same in every run.
pub const EPOCH: Duration = Duration::from_secs(1_767_225_600);

impl FakeApiServer {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the state is still what it was.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kube client talking to this server, with `namespace` as its default namespace.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { server.handle(request).await }
        });
        kube::Client::new(service, namespace)
    }

    /// Sets the server's clock (creation timestamps).
    pub fn set_now(&self, now: SystemTime) {
        self.lock().now = Some(now);
    }

    /// The server's clock.
    pub fn now(&self) -> SystemTime {
        self.lock().now.unwrap_or(UNIX_EPOCH + EPOCH)
    }

    /// Stores `object` as it is, without any validation, as if another client had created it
    /// (server-set metadata is filled in where missing); watchers see `ADDED` or `MODIFIED`.
    pub fn insert(&self, resource: &str, namespace: &str, mut object: Value) -> Value {
        let mut state = self.lock();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key = (namespace.to_owned(), name);
        let existing = state
            .objects
            .get(resource)
            .and_then(|m| m.get(&key))
            .cloned();
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.stamp(&mut object, namespace, existing.as_ref());
        state.store(resource, key, object.clone(), kind);
        object
    }

    /// One object, as stored.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(resource)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Every object of `resource` in `namespace`, by name.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(resource)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| ns == namespace)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names of every object of `resource` in `namespace`.
    pub fn names(&self, resource: &str, namespace: &str) -> Vec<String> {
        self.list(resource, namespace)
            .iter()
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// Deletes an object as another client would; watchers see `DELETED`.
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.lock();
        state.delete(resource, &(namespace.to_owned(), name.to_owned()))
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forgets the event history: a watch from any version seen so far gets `410 Expired`.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted_below = state.rv + 1;
    }

    /// Compacts and sends every open watch the `410 Expired` error event, as a server does
    /// after its watch cache lost the history (clients must relist).
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        state.compacted_below = state.rv + 1;
        let line = error_event(410, "Expired", "too old resource version");
        for watch in state.watches.drain(..) {
            let _ = watch.tx.send(line.clone());
        }
    }

    /// Ends every open watch cleanly (a server restart, a load balancer's idle timeout).
    pub fn close_watches(&self) {
        self.lock().watches.clear();
    }

    /// The number of open watches of `resource`.
    pub fn open_watches(&self, resource: &str) -> usize {
        let mut state = self.lock();
        state.watches.retain(|w| !w.tx.is_closed());
        state
            .watches
            .iter()
            .filter(|w| w.resource == resource)
            .count()
    }

    /// Sends a raw line (anything, malformed JSON included) to every open watch of `resource`.
    pub fn inject_watch_line(&self, resource: &str, line: &[u8]) {
        let state = self.lock();
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        let bytes = Bytes::from(bytes);
        for watch in state.watches.iter().filter(|w| w.resource == resource) {
            let _ = watch.tx.send(bytes.clone());
        }
    }

    /// Fails the next `count` requests that `matching` selects.
    pub fn fail(&self, matching: FaultMatch, count: usize, kind: FaultKind) {
        self.lock().faults.push(Fault {
            method: matching.method,
            resource: matching.resource,
            watch: matching.watch,
            remaining: count,
            kind,
        });
    }

    /// Removes every injected fault not yet used up.
    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    /// Every request served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.lock().log.clear();
    }

    /// How many requests so far were writes (POST, PUT, PATCH, DELETE) to `resource`.
    pub fn writes(&self, resource: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|l| !l.starts_with("GET ") && addresses(l, resource))
            .count()
    }

    /// Serves the API over plain HTTP on `listener` until the returned future is dropped, for a
    /// process that reaches it through a kubeconfig (`server: http://127.0.0.1:<port>`), such
    /// as `wgcable gateway --broker kubernetes` started by a test.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let server = self.clone();
            // One task per connection, like any HTTP server; they end with their connection.
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move { server.handle(request).await }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Serves on a fresh loopback port (of the calling thread's network namespace) on a task of
    /// the current runtime; returns the URL and the task (abort it to stop serving).
    pub async fn serve_on_loopback(
        &self,
    ) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        Ok((url, tokio::spawn(self.clone().serve(listener))))
    }

    /// A kubeconfig for a server [`FakeApiServer::serve`]s at `url`, default namespace
    /// `namespace`.
    pub fn kubeconfig(url: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n"
        )
    }

    async fn handle<B>(&self, request: Request<B>) -> Result<Response<FakeBody>, std::io::Error>
    where
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let query = parse_query(parts.uri.query().unwrap_or(""));
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let target = match Target::parse(parts.uri.path()) {
            Some(t) => t,
            None => {
                return Ok(status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ))
            }
        };
        {
            let mut state = self.lock();
            state.log.push(format!(
                "{} {}{}",
                parts.method,
                parts.uri.path(),
                parts
                    .uri
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            ));
            if let Some(kind) = state.take_fault(&parts.method, &target.resource, watch) {
                return match kind {
                    FaultKind::Status(code) => Ok(status(code, reason_for(code), "injected fault")),
                    FaultKind::Unreachable => Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused (injected fault)",
                    )),
                };
            }
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok(match (parts.method, target.name.as_deref()) {
            (Method::GET, None) if watch => self.watch(&target, &query),
            (Method::GET, None) => self.list_objects(&target, &query),
            (Method::GET, Some(name)) => self.get_one(&target, name),
            (Method::POST, None) => self.create(&target, &body),
            (Method::PUT, Some(name)) => self.replace(&target, name, &body),
            (Method::PATCH, Some(name)) => self.patch(&target, name, &content_type, &body),
            (Method::DELETE, Some(name)) => self.delete_one(&target, name),
            _ => status(405, "MethodNotAllowed", "method not allowed"),
        })
    }

    fn list_objects(&self, target: &Target, query: &HashMap<String, String>) -> Response<FakeBody> {
        let selector =
            match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
                Ok(s) => s,
                Err(message) => return status(400, "BadRequest", &message),
            };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > 0);
        let mut state = self.lock();
        let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match state.pages.remove(token) {
                Some(page) => page,
                None => {
                    return status(410, "Expired", "the provided continue parameter is too old")
                }
            },
            None => {
                let items: VecDeque<Value> = state
                    .objects
                    .get(&target.resource)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter(|((ns, _), _)| target.namespace.as_deref().is_none_or(|t| t == ns))
                    .filter(|(_, obj)| selector.matches(obj))
                    .map(|(_, obj)| obj.clone())
                    .collect();
                (state.rv, items)
            }
        };
        let page: Vec<Value> = match limit {
            Some(limit) if items.len() > limit => items.drain(..limit).collect(),
            _ => items.drain(..).collect(),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if !items.is_empty() {
            state.next_token += 1;
            let token = format!("page-{}", state.next_token);
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(items.len());
            state.pages.insert(token, (rv, items));
        }
        json_response(
            200,
            &json!({
                "apiVersion": target.api_version(),
                "kind": format!("{}List", kind_of(&target.resource)),
                "metadata": metadata,
                "items": page,
            }),
        )
    }

    fn watch(&self, target: &Target, query: &HashMap<String, String>) -> Response<FakeBody> {
        let selector =
            match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
                Ok(s) => s,
                Err(message) => return status(400, "BadRequest", &message),
            };
        let from = query
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or("");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        {
            let mut state = self.lock();
            let in_namespace = |ns: &str| target.namespace.as_deref().is_none_or(|t| t == ns);
            match from {
                // "Start at most recent / any": synthetic ADDED events for what exists now.
                "" | "0" => {
                    for ((ns, _), obj) in state.objects.get(&target.resource).into_iter().flatten()
                    {
                        if in_namespace(ns) && selector.matches(obj) {
                            let _ = tx.send(event_line("ADDED", obj));
                        }
                    }
                }
                rv => {
                    let rv = match rv.parse::<u64>() {
                        Ok(rv) => rv,
                        Err(_) => return status(400, "BadRequest", "invalid resourceVersion"),
                    };
                    if rv + 1 < state.compacted_below {
                        let _ = tx.send(error_event(410, "Expired", "too old resource version"));
                        drop(tx);
                        return stream_response(rx, Duration::from_secs(timeout));
                    }
                    for event in state.events.iter().filter(|e| e.rv > rv) {
                        if event.resource == target.resource
                            && in_namespace(&event.namespace)
                            && selector.matches(&event.object)
                        {
                            let _ = tx.send(event_line(event.kind, &event.object));
                        }
                    }
                }
            }
            state.watches.push(Watch {
                resource: target.resource.clone(),
                namespace: target.namespace.clone(),
                selector,
                tx,
            });
        }
        stream_response(rx, Duration::from_secs(timeout))
    }

    fn get_one(&self, target: &Target, name: &str) -> Response<FakeBody> {
        let state = self.lock();
        match state
            .objects
            .get(&target.resource)
            .and_then(|m| m.get(&target.key(name)))
        {
            Some(obj) => json_response(200, obj),
            None => not_found(target, name),
        }
    }

    fn create(&self, target: &Target, body: &[u8]) -> Response<FakeBody> {
        let Some(namespace) = target.namespace.clone() else {
            return status(
                405,
                "MethodNotAllowed",
                "only namespaced resources are served",
            );
        };
        let mut object: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return status(400, "BadRequest", "the body is not a JSON object"),
        };
        let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => {
                return status(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name is required",
                )
            }
        };
        if let Some(ns) = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            if ns != namespace {
                return status(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                );
            }
        }
        let mut state = self.lock();
        let key = (namespace.clone(), name.clone());
        if state
            .objects
            .get(&target.resource)
            .is_some_and(|m| m.contains_key(&key))
        {
            return status(
                409,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", target.resource),
            );
        }
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("uid");
            meta.remove("creationTimestamp");
        }
        state.stamp(&mut object, &namespace, None);
        state.store(&target.resource, key, object.clone(), "ADDED");
        json_response(201, &object)
    }

    fn replace(&self, target: &Target, name: &str, body: &[u8]) -> Response<FakeBody> {
        let mut object: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return status(400, "BadRequest", "the body is not a JSON object"),
        };
        if object.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            return status(
                400,
                "BadRequest",
                "the name of the object does not match the name in the URL",
            );
        }
        let mut state = self.lock();
        let key = target.key(name);
        let Some(existing) = state
            .objects
            .get(&target.resource)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return not_found(target, name);
        };
        match object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv)
                if Some(rv)
                    != existing
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str) =>
            {
                return conflict(target, name);
            }
            None if target.is_custom() => {
                return status(
                    422,
                    "Invalid",
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                );
            }
            _ => {}
        }
        self.write(&mut state, target, key, &existing, &mut object)
    }

    fn patch(
        &self,
        target: &Target,
        name: &str,
        content_type: &str,
        body: &[u8],
    ) -> Response<FakeBody> {
        if !matches!(
            content_type,
            "application/merge-patch+json" | "application/strategic-merge-patch+json"
        ) {
            return status(
                415,
                "UnsupportedMediaType",
                "only merge and strategic merge patches are served",
            );
        }
        let patch: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return status(400, "BadRequest", "the patch is not a JSON object"),
        };
        let mut state = self.lock();
        let key = target.key(name);
        let Some(existing) = state
            .objects
            .get(&target.resource)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return not_found(target, name);
        };
        if let Some(rv) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if Some(rv)
                != existing
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
            {
                return conflict(target, name);
            }
        }
        let mut object = existing.clone();
        merge_patch(&mut object, &patch);
        self.write(&mut state, target, key, &existing, &mut object)
    }

    /// Stores an update unless it changes nothing (then the version stays, as in etcd).
    fn write(
        &self,
        state: &mut State,
        target: &Target,
        key: (String, String),
        existing: &Value,
        object: &mut Value,
    ) -> Response<FakeBody> {
        // Server-owned metadata cannot be changed by a client.
        for field in ["uid", "creationTimestamp", "namespace", "generation"] {
            match existing.pointer(&format!("/metadata/{field}")) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove(field);
                    }
                }
            }
        }
        object["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
        if object == existing {
            return json_response(200, existing);
        }
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.store_at(&target.resource, key, object.clone(), "MODIFIED");
        json_response(200, object)
    }

    fn delete_one(&self, target: &Target, name: &str) -> Response<FakeBody> {
        let mut state = self.lock();
        match state.delete(&target.resource, &target.key(name)) {
            Some(obj) => json_response(200, &obj),
            None => not_found(target, name),
        }
    }
}

impl State {
    fn take_fault(&mut self, method: &Method, resource: &str, watch: bool) -> Option<FaultKind> {
        let fault = self.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.as_ref().is_none_or(|m| m == method)
                && f.resource.as_deref().is_none_or(|r| r == resource)
                && f.watch.is_none_or(|w| w == watch)
        })?;
        fault.remaining -= 1;
        let kind = fault.kind.clone();
        self.faults.retain(|f| f.remaining > 0);
        Some(kind)
    }

    fn now(&self) -> SystemTime {
        self.now.unwrap_or(UNIX_EPOCH + EPOCH)
    }

    /// Fills in server-set metadata where missing (a new version always).
    fn stamp(&mut self, object: &mut Value, namespace: &str, existing: Option<&Value>) {
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        self.rv += 1;
        let rv = self.rv;
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            let uid = match existing.and_then(|e| e.pointer("/metadata/uid")) {
                Some(uid) => uid.clone(),
                None => {
                    self.uid += 1;
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uid))
                }
            };
            object["metadata"]["uid"] = uid;
        }
        if object.pointer("/metadata/creationTimestamp").is_none() {
            let created = match existing.and_then(|e| e.pointer("/metadata/creationTimestamp")) {
                Some(t) => t.clone(),
                None => json!(rfc3339(self.now())),
            };
            object["metadata"]["creationTimestamp"] = created;
        }
        if object.pointer("/metadata/generation").is_none() && object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
    }

    fn store(&mut self, resource: &str, key: (String, String), object: Value, kind: &'static str) {
        self.store_at(resource, key, object, kind);
    }

    /// Stores `object` (already versioned) and tells the watchers.
    fn store_at(
        &mut self,
        resource: &str,
        key: (String, String),
        object: Value,
        kind: &'static str,
    ) {
        let namespace = key.0.clone();
        self.objects
            .entry(resource.to_owned())
            .or_default()
            .insert(key, object.clone());
        self.publish(resource, &namespace, kind, object);
    }

    fn delete(&mut self, resource: &str, key: &(String, String)) -> Option<Value> {
        let mut object = self.objects.get_mut(resource)?.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.publish(resource, &key.0, "DELETED", object.clone());
        Some(object)
    }

    fn publish(&mut self, resource: &str, namespace: &str, kind: &'static str, object: Value) {
        let line = event_line(kind, &object);
        self.watches.retain(|w| !w.tx.is_closed());
        for watch in &self.watches {
            if watch.resource == resource
                && watch.namespace.as_deref().is_none_or(|n| n == namespace)
                && watch.selector.matches(&object)
            {
                let _ = watch.tx.send(line.clone());
            }
        }
        self.events.push(Event {
            rv: self.rv,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            kind,
            object,
        });
    }
}

/// The resource, namespace and name a request path addresses.
struct Target {
    /// `group/version/plural`, `core` for the core group.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => ("core".to_owned() + "/v1", rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            ["namespaces", ns, plural] => (Some(ns.to_string()), plural, None),
            ["namespaces", ns, plural, name] => {
                (Some(ns.to_string()), plural, Some(name.to_string()))
            }
            [plural] => (None, plural, None),
            _ => return None,
        };
        Some(Target {
            resource: format!("{group}/{plural}"),
            namespace,
            name,
        })
    }

    fn key(&self, name: &str) -> (String, String) {
        (self.namespace.clone().unwrap_or_default(), name.to_owned())
    }

    fn api_version(&self) -> String {
        let mut parts = self.resource.rsplitn(2, '/');
        let _plural = parts.next();
        let gv = parts.next().unwrap_or("");
        gv.strip_prefix("core/").unwrap_or(gv).to_owned()
    }

    /// Custom resources (served from CRDs) refuse updates without a resourceVersion.
    fn is_custom(&self) -> bool {
        self.resource.starts_with("submariner.io/")
    }
}

/// Whether a request log line addresses `resource`.
fn addresses(line: &str, resource: &str) -> bool {
    let (gv, plural) = resource.rsplit_once('/').unwrap_or(("", resource));
    let prefix = match gv.strip_prefix("core/") {
        Some(v) => format!("/api/{v}/"),
        None => format!("/apis/{gv}/"),
    };
    let path = line.split('?').next().unwrap_or("");
    path.contains(&prefix) && path.contains(&format!("/{plural}"))
}

fn kind_of(resource: &str) -> &'static str {
    match resource.rsplit('/').next().unwrap_or("") {
        "endpoints" => "Endpoint",
        "clusters" => "Cluster",
        "gateways" => "Gateway",
        "leases" => "Lease",
        "pods" => "Pod",
        _ => "Object",
    }
}

/// A label selector: equality, inequality and existence requirements, all of which must hold.
#[derive(Clone, Debug, Default)]
struct Selector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains(" in ") || part.contains(" notin ") || part.contains('(') {
                return Err("set-based label selectors are not served by the fake".into());
            }
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
        };
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// RFC 7386 JSON merge patch. By hand: fifteen lines against a dependency for one function.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(map) = target {
                for (key, value) in entries {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A remote cluster's Endpoint as a gateway publishes it and the API server returns it
/// (labelled with its cluster id, with managed fields; the server adds uid, resourceVersion,
/// creationTimestamp and generation on insert): WireGuard, port 4500, no NAT.
pub fn endpoint_object(
    cluster: &str,
    private_ip: &str,
    public_key: &str,
    subnets: &[&str],
) -> Value {
    let cable = format!(
        "submariner-cable-{cluster}-{}",
        private_ip.replace(['.', ':'], "-")
    );
    json!({
        "apiVersion": "submariner.io/v1",
        "kind": "Endpoint",
        "metadata": {
            "name": format!("{cluster}-{cable}"),
            "labels": {
                "submariner-io/clusterID": cluster,
                "submariner-io/originatingNamespace": "submariner-operator",
            },
            "managedFields": [{
                "apiVersion": "submariner.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {".": {}, "f:backend": {}, "f:subnets": {}}},
                "manager": "submariner-gateway",
                "operation": "Update",
                "time": "2026-01-01T00:00:00Z"
            }]
        },
        "spec": {
            "backend": "wireguard",
            "backend_config": {
                "interface-name": "submariner",
                "preferred-server": "false",
                "publicKey": public_key,
                "udp-port": "4500"
            },
            "cable_name": cable,
            "cluster_id": cluster,
            "hostname": format!("{cluster}-gateway"),
            "nat_enabled": false,
            "private_ip": private_ip,
            "public_ip": "",
            "subnets": subnets,
        }
    })
}

/// RFC 3339 in whole seconds, as the API server writes `metav1.Time`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("a JSON value always encodes");
    line.push(b'\n');
    Bytes::from(line)
}

fn error_event(code: u16, reason: &str, message: &str) -> Bytes {
    event_line("ERROR", &status_body(code, reason, message))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn not_found(target: &Target, name: &str) -> Response<FakeBody> {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", target.resource),
    )
}

fn conflict(target: &Target, name: &str) -> Response<FakeBody> {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            target.resource
        ),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response<FakeBody> {
    json_response(code, &status_body(code, reason, message))
}

fn json_response(code: u16, body: &Value) -> Response<FakeBody> {
    let bytes = serde_json::to_vec(body).expect("a JSON value always encodes");
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch response: the lines the channel carries until it closes or `timeout` passes (the
/// server side of `timeoutSeconds`).
fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>, timeout: Duration) -> Response<FakeBody> {
    let deadline = tokio::time::Instant::now() + timeout;
    let lines = futures::stream::unfold(rx, move |mut rx| async move {
        tokio::select! {
            line = rx.recv() => line.map(|l| (Ok::<_, Infallible>(http_body::Frame::data(l)), rx)),
            _ = tokio::time::sleep_until(deadline) => None,
        }
    });
    let mut response = Response::new(StreamBody::new(lines.boxed()).boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
