//! The gateway's HTTP endpoint: metrics, health, readiness and the connection list.
//!
//! It runs next to the data plane's control loop, so a client must never be able to hold it up,
//! and a Prometheus scrape must keep succeeding while others abuse the port (issue 13: 64
//! slowloris sockets failed a quarter of the scrapes behind the old 32-connection cap). Every
//! connection is accepted at once and judged by [`Admission`]:
//! - at most `max_connections_per_ip` from one peer address; more are closed on accept, so a
//!   single abuser holds a handful of slots however many sockets it opens;
//! - at most `max_connections` in all; at the cap, the oldest connection that is not serving a
//!   request (still sending its header, or idle in keep-alive) is shed to make room, so slow
//!   and idle sockets go first and a client that sends its request at once gets served;
//! - a short header deadline (slowloris), a whole-connection timeout (slow readers, endless
//!   keep-alive) and a small bound on request bodies;
//! - small per-connection memory: hyper's read buffer is capped at the header limit (8 KiB).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use wgcable_api::ConnectionReport;

use crate::{Error, GatewayMetrics};

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Request headers are small for every route we serve; anything larger is refused with 431.
/// It is also the cap of hyper's read buffer (hyper's own minimum), which bounds what one
/// connection costs.
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// Accept failures (e.g. out of file descriptors) are retried after a pause that doubles up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What the HTTP endpoint reads from the gateway. Both calls are made on the server's tasks, so
/// they must return quickly from a snapshot and never block on the reconcile loop.
pub trait GatewayState: Send + Sync + 'static {
    /// The current connections, as `/connections` reports them.
    fn connections(&self) -> Vec<ConnectionReport>;
    /// Whether the device is configured and the first reconcile is done (`/readyz`).
    fn ready(&self) -> bool;
    /// What `/readyz` says besides ready or not, one line each (a broker that is unreachable,
    /// a device that does not answer); empty when all is well.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// What `/conflicts` serves (the admission layer's refusals and holdings); `None`: 404.
    fn conflicts(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Limits that keep slow or malicious clients from holding up the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// How long a client may take to send a request's header (first and keep-alive ones alike).
    /// Default 2 s: scrapers and probes send their header in one packet; 2 s still covers a
    /// retransmission (the initial TCP retransmission timeout is 1 s).
    pub header_timeout: Duration,
    /// How long one connection may live; it is then shut down gracefully.
    pub connection_timeout: Duration,
    /// How long a connection being shut down may take to finish its request before it is dropped.
    pub drain_timeout: Duration,
    /// Largest request body accepted; larger ones get 413. No route needs a body.
    pub max_request_bytes: usize,
    /// Connections open at once. At the cap the oldest connection not serving a request is shed.
    /// Default 1,024 (each costs a task and at most an 8 KiB buffer: ~10 MiB in all).
    pub max_connections: usize,
    /// Connections open at once from one peer IP address; more are closed on accept. Default 8
    /// (a Prometheus server needs one, a few probes one each).
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            max_request_bytes: 4 * 1024,
            max_connections: 1024,
            max_connections_per_ip: 8,
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown` resolves, then stops accepting, lets open
/// connections finish their request (for at most `drain_timeout`) and returns.
///
/// Routes: `GET /metrics`, `/healthz`, `/readyz`, `/connections` (HEAD too). Unknown paths get
/// 404, other methods 405 with an `Allow` header.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<GatewayMetrics>,
    state: Arc<dyn GatewayState>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let admission = Arc::new(Admission::new(
        config.max_connections,
        config.max_connections_per_ip,
    ));
    serve_with(listener, metrics, state, config, admission, shutdown).await
}

/// [`serve`] with the admission state given, so tests can watch it.
async fn serve_with(
    listener: TcpListener,
    metrics: Arc<GatewayMetrics>,
    state: Arc<dyn GatewayState>,
    config: HttpConfig,
    admission: Arc<Admission>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let local = listener
        .local_addr()
        .map_err(|source| Error::ListenerAddr { source })?;
    tracing::info!(%local, "serving metrics and health over HTTP");

    let app = Arc::new(App {
        metrics,
        state,
        max_request_bytes: config.max_request_bytes,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let limits = ConnLimits {
        connection_timeout: config.connection_timeout,
        drain_timeout: config.drain_timeout,
    };
    // Tells every connection task to finish up; they also stop if this sender is dropped.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);

    loop {
        // Reap finished connections so the set does not grow with every scrape.
        while tasks.try_join_next().is_some() {}

        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                // Refused connections are dropped here, which closes them; nothing was read.
                let Some(ticket) = admission.admit(peer.ip()) else {
                    continue;
                };
                tasks.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    peer,
                    Arc::clone(&app),
                    stop_rx.clone(),
                    limits,
                    ticket,
                ));
            }
            Err(error) => {
                // Usually a client that gave up before we accepted, or descriptor exhaustion;
                // pausing keeps the latter from becoming a busy loop.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(%local, %error, ?backoff, "accepting an HTTP connection failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }

    // Refuse new clients while the open connections drain.
    drop(listener);
    tracing::info!(%local, open = tasks.len(), "HTTP endpoint shutting down");
    let _ = stop_tx.send(true);
    // Each task bounds its own drain; the margin only guards against a task that does not.
    let drained = tokio::time::timeout(config.drain_timeout + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    connection_timeout: Duration,
    drain_timeout: Duration,
}

/// Decides which connections are served: per-IP and global caps, shedding the oldest
/// connection that is not serving a request when the global cap is reached.
///
/// Its lock is held for a few map operations only, never across an await; at the cap, finding
/// the oldest idle connection scans at most `max_connections` entries, which is cheaper than
/// what accepting the connection already cost.
#[derive(Debug)]
struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    next_id: AtomicU64,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    /// By id, that is by age: the first entry is the oldest connection.
    conns: BTreeMap<u64, Slot>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    shared: Arc<SlotShared>,
}

/// What the accept loop and a connection's task share.
#[derive(Debug, Default)]
struct SlotShared {
    /// A request is being served (its header was read and its response is not yet produced).
    serving: AtomicBool,
    /// Notified when the connection is shed; its task then drops it at once.
    shed: Notify,
}

/// A connection's place in [`Admission`]; gives it back on drop.
#[derive(Debug)]
struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    shared: Arc<SlotShared>,
}

impl Admission {
    fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Self {
            max_connections: max_connections.max(1),
            max_per_ip: max_per_ip.max(1),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic while holding the lock leaves plain counters behind, still usable.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A ticket for a new connection from `ip`, or `None` if it must be closed.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let mut open = self.lock();
        if open.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            tracing::debug!(%ip, "refusing an HTTP connection: too many from this address");
            return None;
        }
        if open.conns.len() >= self.max_connections {
            let oldest_idle = open
                .conns
                .iter()
                .find(|(_, slot)| !slot.shared.serving.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(victim) = oldest_idle else {
                tracing::debug!(%ip, "refusing an HTTP connection: every slot is serving");
                return None;
            };
            if let Some(slot) = open.remove(victim) {
                tracing::debug!(ip = %slot.ip, "shedding the oldest idle HTTP connection");
                slot.shared.shed.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SlotShared::default());
        open.conns.insert(
            id,
            Slot {
                ip,
                shared: Arc::clone(&shared),
            },
        );
        *open.per_ip.entry(ip).or_insert(0) += 1;
        Some(Ticket {
            id,
            admission: Arc::clone(self),
            shared,
        })
    }

    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.lock().conns.len()
    }
}

impl Open {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.conns.remove(&id)?;
        if let Some(count) = self.per_ip.get_mut(&slot.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&slot.ip);
            }
        }
        Some(slot)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Already gone if it was shed.
        self.admission.lock().remove(self.id);
    }
}

/// Marks a connection as serving for as long as it lives.
struct Serving(Arc<SlotShared>);

impl Serving {
    fn start(shared: &Arc<SlotShared>) -> Self {
        shared.serving.store(true, Ordering::Release);
        Self(Arc::clone(shared))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.store(false, Ordering::Release);
    }
}

/// What request handlers need, shared by all connections.
struct App {
    metrics: Arc<GatewayMetrics>,
    state: Arc<dyn GatewayState>,
    max_request_bytes: usize,
}

async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    ticket: Ticket,
) {
    let shared = Arc::clone(&ticket.shared);
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        let serving = Serving::start(&shared);
        async move {
            let response = app.handle(request).await;
            drop(serving);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = ticket.shared.shed.notified() => {
            // Shed to make room: it was idle or still sending its header, so nothing is lost.
            return;
        }
        () = tokio::time::sleep(limits.connection_timeout) => None,
        // An error means the server is gone, which is a reason to stop as well.
        _ = stop.wait_for(|stop| *stop) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // Let a request in flight complete, then close; a client that does not read its
            // response is dropped after the drain timeout.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.drain_timeout, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(%peer, "dropping an HTTP connection that did not drain in time");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        // Header timeouts, resets and garbage requests land here; they are the client's business.
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    Connections,
    Conflicts,
}

impl Route {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/metrics" => Some(Self::Metrics),
            "/healthz" => Some(Self::Healthz),
            "/readyz" => Some(Self::Readyz),
            "/connections" => Some(Self::Connections),
            "/conflicts" => Some(Self::Conflicts),
            _ => None,
        }
    }
}

impl App {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let limit = self.max_request_bytes;
        // A declared length over the limit is refused before a byte of the body is read.
        if request.body().size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let Some(route) = Route::from_path(request.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if !request.body().is_end_stream() {
            // No route uses a body, but one of unknown length (chunked) is read within the limit
            // so that an oversized one is answered with 413 rather than silently ignored.
            if let Err(error) = Limited::new(request.into_body(), limit).collect().await {
                if error.downcast_ref::<LengthLimitError>().is_some() {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                }
                return text(StatusCode::BAD_REQUEST, "unreadable request body\n");
            }
        }

        match route {
            Route::Metrics => match self.metrics.encode_text() {
                Ok(body) => with_type(StatusCode::OK, PROMETHEUS_TEXT_CONTENT_TYPE, body.into()),
                Err(error) => {
                    tracing::warn!(error = %wgcable_api::error_chain(&error), "serving /metrics");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    )
                }
            },
            Route::Healthz => text(StatusCode::OK, "ok"),
            Route::Readyz => {
                let (status, word) = if self.state.ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                };
                let notes = self.state.notes();
                if notes.is_empty() {
                    text(status, word)
                } else {
                    let body = std::iter::once(word.to_owned())
                        .chain(notes)
                        .collect::<Vec<_>>()
                        .join("\n");
                    with_type(status, TEXT_CONTENT_TYPE, Bytes::from(body))
                }
            }
            Route::Conflicts => match self.state.conflicts().map(|v| serde_json::to_vec(&v)) {
                Some(Ok(body)) => with_type(StatusCode::OK, JSON_CONTENT_TYPE, body.into()),
                Some(Err(error)) => {
                    tracing::warn!(%error, "serializing conflicts for /conflicts");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "serializing conflicts failed\n",
                    )
                }
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            Route::Connections => match serde_json::to_vec(&self.state.connections()) {
                Ok(body) => with_type(StatusCode::OK, JSON_CONTENT_TYPE, body.into()),
                Err(error) => {
                    tracing::warn!(%error, "serializing connections for /connections");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "serializing connections failed\n",
                    )
                }
            },
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        TEXT_CONTENT_TYPE,
        Bytes::from_static(body.as_bytes()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use wgcable_api::{Connection, ConnectionStatus, EndpointSpec};

    use super::*;
    use crate::{names, prom_text, CableLabels};

    /// Generous upper bound for anything that should happen promptly on a loaded machine.
    const DEADLINE: Duration = Duration::from_secs(10);

    struct FakeState {
        ready: AtomicBool,
        connections: Mutex<Vec<ConnectionReport>>,
    }

    impl GatewayState for FakeState {
        fn connections(&self) -> Vec<ConnectionReport> {
            self.connections.lock().expect("not poisoned").clone()
        }
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
    }

    /// Connects from `ip` (any 127.0.0.0/8 address is this host's), so tests can play several
    /// clients.
    async fn connect_from(ip: IpAddr, addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(ip, 0))
            .expect("bind a loopback address");
        tokio::time::timeout(DEADLINE, socket.connect(addr))
            .await
            .expect("connect within the deadline")
            .expect("connect")
    }

    /// Polls until the server holds `count` connections.
    async fn wait_for_open(server: &Server, count: usize) {
        tokio::time::timeout(DEADLINE, async {
            while server.admission.open_connections() != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the server reaches the expected number of connections");
    }

    struct Server {
        addr: SocketAddr,
        metrics: Arc<GatewayMetrics>,
        admission: Arc<Admission>,
        state: Arc<FakeState>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), Error>>,
    }

    impl Server {
        async fn start(config: HttpConfig) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("bound socket has an address");
            let metrics = Arc::new(GatewayMetrics::new().expect("metrics register"));
            let state = Arc::new(FakeState {
                ready: AtomicBool::new(false),
                connections: Mutex::new(Vec::new()),
            });
            let (stop, stopped) = oneshot::channel::<()>();
            let admission = Arc::new(Admission::new(
                config.max_connections,
                config.max_connections_per_ip,
            ));
            let task = tokio::spawn(serve_with(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&state) as Arc<dyn GatewayState>,
                config,
                Arc::clone(&admission),
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                metrics,
                state,
                admission,
                stop: Some(stop),
                task,
            }
        }

        async fn shut_down(mut self) {
            let _ = self.stop.take().expect("stopped once").send(());
            tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("serve returns promptly after shutdown")
                .expect("serve task did not panic")
                .expect("serve ends without error");
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn get(path: &str) -> Vec<u8> {
        request("GET", path, "")
    }

    fn request(method: &str, path: &str, extra_headers: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra_headers}\r\n"
        )
        .into_bytes()
    }

    /// Sends one raw request on a fresh connection and reads the reply until the server closes.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
        let received = tokio::time::timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr)
                .await
                .expect("connect to the server");
            stream.write_all(raw).await.expect("send the request");
            let mut received = Vec::new();
            stream
                .read_to_end(&mut received)
                .await
                .expect("read the reply");
            received
        })
        .await
        .expect("reply within the deadline");
        let text = String::from_utf8(received).expect("replies are UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header ends the head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status code");
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').expect("header lines have a colon");
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// Reads until the server closes the connection (EOF or reset), within the deadline.
    async fn until_closed(stream: &mut TcpStream) {
        tokio::time::timeout(DEADLINE, async {
            let mut sink = [0_u8; 1024];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server closes the connection within the deadline");
    }

    fn sample_connections() -> Vec<ConnectionReport> {
        let endpoint = EndpointSpec {
            cluster_id: "west".to_owned(),
            hostname: "gw-west".to_owned(),
            public_ip: "203.0.113.7".to_owned(),
            ..EndpointSpec::default()
        };
        vec![
            ConnectionReport {
                connection: Connection {
                    status: ConnectionStatus::Connected,
                    status_message: "Rx=10 Bytes, Tx=20 Bytes".to_owned(),
                    ..Connection::new(endpoint.clone(), "203.0.113.7", false)
                },
                rx_bytes: Some(10),
                tx_bytes: Some(20),
                last_handshake_seconds: Some(3.0),
            },
            Connection {
                status: ConnectionStatus::Error,
                status_message: "no initial handshake".to_owned(),
                ..Connection::new(endpoint, "203.0.113.7", true)
            }
            .into(),
        ]
    }

    fn test_cable() -> CableLabels {
        CableLabels {
            cable_driver: "wireguard".to_owned(),
            local_cluster: "east".to_owned(),
            local_hostname: "gw-east".to_owned(),
            local_endpoint_ip: "198.51.100.1".to_owned(),
            remote_cluster: "west".to_owned(),
            remote_hostname: "gw-west".to_owned(),
            remote_endpoint_ip: "203.0.113.7".to_owned(),
        }
    }

    #[tokio::test]
    async fn serves_every_route() {
        let server = Server::start(HttpConfig::default()).await;
        let cable = test_cable();
        server
            .metrics
            .set_connection_status(&cable, ConnectionStatus::Connected);
        server.metrics.set_traffic(&cable, 100, 200);
        *server.state.connections.lock().expect("not poisoned") = sample_connections();

        let metrics = exchange(server.addr, &get("/metrics")).await;
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.header("content-type"),
            Some(PROMETHEUS_TEXT_CONTENT_TYPE)
        );
        let scrape = prom_text::parse(&metrics.body).expect("the scrape parses");
        assert_eq!(scrape.series(names::CONNECTIONS).len(), 1);
        assert_eq!(scrape.series(names::GATEWAY_TX_BYTES)[0].value, 200.0);

        let health = exchange(server.addr, &get("/healthz")).await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));

        let connections = exchange(server.addr, &get("/connections")).await;
        assert_eq!(connections.status, 200);
        assert_eq!(connections.header("content-type"), Some(JSON_CONTENT_TYPE));
        let served: serde_json::Value =
            serde_json::from_str(&connections.body).expect("/connections is JSON");
        let expected = serde_json::to_value(sample_connections()).expect("connections serialize");
        assert_eq!(served, expected);
        assert_eq!(served.as_array().map(Vec::len), Some(2));
        // Submariner's field names, as `subctl` and the Gateway CR expect them.
        assert_eq!(served[0]["status"], "connected");
        assert_eq!(served[0]["statusMessage"], "Rx=10 Bytes, Tx=20 Bytes");
        assert_eq!(served[1]["usingNAT"], true);
        assert_eq!(served[1]["usingIP"], "203.0.113.7");
        assert_eq!(served[1]["endpoint"]["cluster_id"], "west");

        // A query string does not change the route, and HEAD gets the headers only.
        let query = exchange(server.addr, &get("/healthz?verbose=1")).await;
        assert_eq!(query.status, 200);
        let head = exchange(server.addr, &request("HEAD", "/metrics", "")).await;
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-type"),
            Some(PROMETHEUS_TEXT_CONTENT_TYPE)
        );
        assert_eq!(head.body, "");

        server.shut_down().await;
    }

    #[tokio::test]
    async fn unknown_paths_get_404_and_wrong_methods_405() {
        let server = Server::start(HttpConfig::default()).await;
        for (method, path, status) in [
            ("GET", "/", 404),
            ("GET", "/metrics/", 404),
            ("GET", "/debug/pprof", 404),
            ("POST", "/nope", 404),
            ("POST", "/metrics", 405),
            ("PUT", "/healthz", 405),
            ("DELETE", "/connections", 405),
            ("OPTIONS", "/readyz", 405),
        ] {
            let reply =
                exchange(server.addr, &request(method, path, "Content-Length: 0\r\n")).await;
            assert_eq!(reply.status, status, "{method} {path}");
            if status == 405 {
                assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method} {path}");
            }
        }
        server.shut_down().await;
    }

    #[tokio::test]
    async fn readiness_follows_the_gateway_state() {
        let server = Server::start(HttpConfig::default()).await;
        assert_eq!(exchange(server.addr, &get("/readyz")).await.status, 503);
        // Health is about the process being alive, not about readiness.
        assert_eq!(exchange(server.addr, &get("/healthz")).await.status, 200);
        server.state.ready.store(true, Ordering::SeqCst);
        assert_eq!(exchange(server.addr, &get("/readyz")).await.status, 200);
        server.state.ready.store(false, Ordering::SeqCst);
        assert_eq!(exchange(server.addr, &get("/readyz")).await.status, 503);
        server.shut_down().await;
    }

    #[tokio::test]
    async fn oversized_request_bodies_get_413() {
        let config = HttpConfig {
            max_request_bytes: 64,
            ..HttpConfig::default()
        };
        let server = Server::start(config).await;

        // Declared too large: refused without reading it.
        let declared = exchange(
            server.addr,
            &request("POST", "/metrics", "Content-Length: 100000\r\n"),
        )
        .await;
        assert_eq!(declared.status, 413);

        // Chunked, so the size is only known while reading.
        let mut chunked = request("GET", "/metrics", "Transfer-Encoding: chunked\r\n");
        chunked.extend_from_slice(format!("41\r\n{}\r\n0\r\n\r\n", "x".repeat(65)).as_bytes());
        assert_eq!(exchange(server.addr, &chunked).await.status, 413);

        // A small body on a GET is tolerated.
        let mut small = request("GET", "/healthz", "Content-Length: 5\r\n");
        small.extend_from_slice(b"hello");
        assert_eq!(exchange(server.addr, &small).await.status, 200);

        // Huge headers are refused by hyper itself.
        let huge = request(
            "GET",
            "/healthz",
            &format!("X-Filler: {}\r\n", "y".repeat(2 * MAX_HEADER_BYTES)),
        );
        assert_eq!(exchange(server.addr, &huge).await.status, 431);

        server.shut_down().await;
    }

    #[tokio::test]
    async fn a_slowloris_client_neither_blocks_scrapes_nor_stays_connected() {
        let header_timeout = Duration::from_secs(2);
        let server = Server::start(HttpConfig {
            header_timeout,
            ..HttpConfig::default()
        })
        .await;

        let started = Instant::now();
        let mut loris = TcpStream::connect(server.addr).await.expect("connect");
        loris
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
            .await
            .expect("send half a header");

        let scrape = exchange(server.addr, &get("/metrics")).await;
        assert_eq!(scrape.status, 200);
        assert!(
            started.elapsed() < header_timeout,
            "the scrape was served while the slow client was still connected"
        );

        until_closed(&mut loris).await;
        assert!(
            started.elapsed() >= header_timeout,
            "closed only once the header timeout passed ({:?})",
            started.elapsed()
        );
        server.shut_down().await;
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_is_shed() {
        let config = HttpConfig {
            // Far away: shedding, not the deadline, must free the slot.
            header_timeout: Duration::from_secs(60),
            max_connections: 2,
            ..HttpConfig::default()
        };
        let server = Server::start(config).await;
        let started = Instant::now();
        let mut oldest = TcpStream::connect(server.addr).await.expect("connect");
        oldest.write_all(b"GET /").await.expect("send a fragment");
        let mut younger = TcpStream::connect(server.addr).await.expect("connect");
        younger.write_all(b"GET /").await.expect("send a fragment");
        wait_for_open(&server, 2).await;

        // Both slots are held by slow clients; the scrape takes the oldest one's place.
        let scrape = exchange(server.addr, &get("/healthz")).await;
        assert_eq!(scrape.status, 200);
        until_closed(&mut oldest).await;
        assert!(started.elapsed() < Duration::from_secs(60));
        // The younger slow client is still connected (it was not the oldest).
        let mut byte = [0_u8; 1];
        let still_open =
            tokio::time::timeout(Duration::from_millis(200), younger.read(&mut byte)).await;
        assert!(still_open.is_err(), "the younger client was left alone");
        server.shut_down().await;
    }

    #[tokio::test]
    async fn one_address_gets_at_most_its_share() {
        let config = HttpConfig {
            header_timeout: Duration::from_secs(60),
            max_connections_per_ip: 3,
            ..HttpConfig::default()
        };
        let server = Server::start(config).await;
        let abuser: IpAddr = "127.0.3.1".parse().expect("ip");
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut stream = connect_from(abuser, server.addr).await;
            stream.write_all(b"GET /").await.expect("send a fragment");
            held.push(stream);
        }
        wait_for_open(&server, 3).await;
        // The fourth from the same address is closed at once, without a reply.
        let mut fourth = connect_from(abuser, server.addr).await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(DEADLINE, fourth.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "closed within the deadline");
        assert!(sink.is_empty(), "nothing was served to it");
        // Another address is served.
        assert_eq!(exchange(server.addr, &get("/healthz")).await.status, 200);
        // Freed slots are given back.
        drop(held);
        wait_for_open(&server, 0).await;
        let mut again = connect_from(abuser, server.addr).await;
        again.write_all(&get("/healthz")).await.expect("send");
        let mut reply = Vec::new();
        tokio::time::timeout(DEADLINE, again.read_to_end(&mut reply))
            .await
            .expect("a reply")
            .expect("read");
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        server.shut_down().await;
    }

    #[test]
    fn admission_refuses_when_every_slot_is_serving() {
        let admission = Arc::new(Admission::new(2, 8));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = admission.admit(ip).expect("room");
        let second = admission.admit(ip).expect("room");
        let _busy = (
            Serving::start(&first.shared),
            Serving::start(&second.shared),
        );
        assert!(admission.admit(ip).is_none(), "nobody idle to shed");
        drop(_busy);
        let third = admission.admit(ip).expect("the oldest idle is shed");
        assert_eq!(admission.open_connections(), 2);
        // The shed one's ticket gives nothing back twice.
        drop(first);
        assert_eq!(admission.open_connections(), 2);
        drop((second, third));
        assert_eq!(admission.open_connections(), 0);
        assert!(admission.lock().per_ip.is_empty());
    }

    /// Sends one request from `ip` and reads the status code; `None` on any failure.
    async fn scrape_from(ip: IpAddr, addr: SocketAddr) -> Option<u16> {
        tokio::time::timeout(DEADLINE, async {
            let mut stream = connect_from(ip, addr).await;
            stream.write_all(&get("/metrics")).await.ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.ok()?;
            std::str::from_utf8(reply.get(9..12)?).ok()?.parse().ok()
        })
        .await
        .ok()
        .flatten()
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    /// Issue 13: legitimate scrapes keep succeeding while 500 slowloris sockets (from 50
    /// addresses, reconnecting whenever they are closed) and a flood of 10,000 connections
    /// (from 100 addresses, 250 at a time, each holding its socket silent until closed or
    /// 100 ms) run, with the default limits. Asserts success counts only; the latencies are
    /// printed as figures (`cargo test -p wgcable-metrics abuse -- --nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_succeed_under_slowloris_and_a_connection_flood_abuse() {
        let server = Server::start(HttpConfig::default()).await;
        let addr = server.addr;
        let scraper: IpAddr = "127.0.0.1".parse().expect("ip");

        let mut baseline = Vec::new();
        for _ in 0..50 {
            let started = Instant::now();
            assert_eq!(
                scrape_from(scraper, addr).await,
                Some(200),
                "baseline scrape"
            );
            baseline.push(started.elapsed());
        }

        let stop = Arc::new(AtomicBool::new(false));
        let lorises_connected = Arc::new(AtomicU64::new(0));
        let mut attackers = JoinSet::new();
        for i in 0..500_u32 {
            let ip = IpAddr::from([127, 0, 1, (i % 50 + 1) as u8]);
            let stop = Arc::clone(&stop);
            let connected = Arc::clone(&lorises_connected);
            attackers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    if socket.bind(SocketAddr::new(ip, 0)).is_err() {
                        return;
                    }
                    let Ok(mut stream) = socket.connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    connected.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x").await;
                    // One byte every 200 ms, never finishing the header.
                    let mut sink = [0_u8; 64];
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let tick = tokio::time::sleep(Duration::from_millis(200));
                        tokio::select! {
                            read = stream.read(&mut sink) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            },
                            () = tick => {
                                if stream.write_all(b"x").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
        }
        // Let the slow clients take their places first.
        tokio::time::timeout(DEADLINE, async {
            while lorises_connected.load(Ordering::Relaxed) < 500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the slow clients connect");

        let flood_started = Instant::now();
        let flooded = Arc::new(AtomicU64::new(0));
        let flood_done = Arc::new(AtomicBool::new(false));
        let mut flood = JoinSet::new();
        for task in 0..250_u32 {
            let flooded = Arc::clone(&flooded);
            flood.spawn(async move {
                for n in 0..40_u32 {
                    let ip = IpAddr::from([127, 0, 2, ((task * 40 + n) % 100 + 1) as u8]);
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        continue;
                    };
                    if socket.bind(SocketAddr::new(ip, 0)).is_err() {
                        continue;
                    }
                    if let Ok(mut stream) = socket.connect(addr).await {
                        flooded.fetch_add(1, Ordering::Relaxed);
                        let mut sink = [0_u8; 16];
                        let _ = tokio::time::timeout(
                            Duration::from_millis(100),
                            stream.read(&mut sink),
                        )
                        .await;
                    }
                }
            });
        }
        let scrapes = {
            let flood_done = Arc::clone(&flood_done);
            tokio::spawn(async move {
                let mut results = Vec::new();
                while !flood_done.load(Ordering::Relaxed) || results.len() < 100 {
                    let started = Instant::now();
                    let status = scrape_from(scraper, addr).await;
                    results.push((status, started.elapsed()));
                }
                results
            })
        };
        while flood.join_next().await.is_some() {}
        let flood_time = flood_started.elapsed();
        flood_done.store(true, Ordering::Relaxed);
        let results = scrapes.await.expect("the scraper did not panic");
        stop.store(true, Ordering::Relaxed);
        attackers.shutdown().await;

        let ok = results
            .iter()
            .filter(|(status, _)| *status == Some(200))
            .count();
        let mut during: Vec<Duration> = results.iter().map(|(_, took)| *took).collect();
        during.sort();
        baseline.sort();
        println!(
            "abuse figures: baseline scrape p50 {:?} p99 {:?}; under 500 slowloris + {} flood \
             connections in {flood_time:?}: {ok}/{} scrapes ok, p50 {:?} p99 {:?} max {:?}; \
             slowloris connects {}",
            percentile(&baseline, 0.5),
            percentile(&baseline, 0.99),
            flooded.load(Ordering::Relaxed),
            results.len(),
            percentile(&during, 0.5),
            percentile(&during, 0.99),
            during.last().copied().unwrap_or_default(),
            lorises_connected.load(Ordering::Relaxed),
        );
        assert!(flooded.load(Ordering::Relaxed) >= 9_000, "the flood ran");
        assert!(results.len() >= 100);
        assert_eq!(ok, results.len(), "every legitimate scrape succeeded");
        server.shut_down().await;
    }

    #[tokio::test]
    async fn connections_are_closed_after_the_connection_timeout() {
        let config = HttpConfig {
            header_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_millis(200),
            ..HttpConfig::default()
        };
        let server = Server::start(config).await;
        let mut idle = TcpStream::connect(server.addr).await.expect("connect");
        // Closed by the connection timeout, long before the header timeout or DEADLINE.
        until_closed(&mut idle).await;
        server.shut_down().await;
    }

    #[tokio::test]
    async fn a_hundred_sequential_scrapes_succeed() {
        let server = Server::start(HttpConfig::default()).await;
        let cable = test_cable();
        for i in 0..100_u64 {
            server.metrics.set_traffic(&cable, i, 2 * i);
            let reply = exchange(server.addr, &get("/metrics")).await;
            assert_eq!(reply.status, 200, "scrape {i}");
            let scrape = prom_text::parse(&reply.body).expect("the scrape parses");
            assert_eq!(scrape.series(names::GATEWAY_RX_BYTES)[0].value, i as f64);
        }
        server.shut_down().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_the_listener() {
        let config = HttpConfig {
            header_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(60),
            ..HttpConfig::default()
        };
        let server = Server::start(config).await;
        let addr = server.addr;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(exchange(addr, &get("/healthz")).await.status, 200);

        // Returns within DEADLINE although the idle connection's own timeouts are a minute away.
        server.shut_down().await;
        until_closed(&mut idle).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
