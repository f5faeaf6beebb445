//! The gateway's HTTP endpoint: metrics, health, readiness and the connection list.
//!
//! It runs next to the data plane's control loop, so a client must never be able to hold it up:
//! every connection is served in its own task, at most `max_connections` at once, with a header
//! read timeout (slowloris), a whole-connection timeout (slow readers, endless keep-alive) and a
//! small bound on request bodies.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use wgcable_api::Connection;

use crate::{Error, GatewayMetrics};

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Request headers are small for every route we serve; anything larger is refused with 431.
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// Accept failures (e.g. out of file descriptors) are retried after a pause that doubles up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What the HTTP endpoint reads from the gateway. Both calls are made on the server's tasks, so
/// they must return quickly from a snapshot and never block on the reconcile loop.
pub trait GatewayState: Send + Sync + 'static {
    /// The current connections, as `/connections` reports them.
    fn connections(&self) -> Vec<Connection>;
    /// Whether the device is configured and the first reconcile is done (`/readyz`).
    fn ready(&self) -> bool;
}

/// Limits that keep slow or malicious clients from holding up the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// How long a client may take to send a request's header (first and keep-alive ones alike).
    pub header_timeout: Duration,
    /// How long one connection may live; it is then shut down gracefully.
    pub connection_timeout: Duration,
    /// How long a connection being shut down may take to finish its request before it is dropped.
    pub drain_timeout: Duration,
    /// Largest request body accepted; larger ones get 413. No route needs a body.
    pub max_request_bytes: usize,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            max_request_bytes: 4 * 1024,
            max_connections: 32,
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
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let limits = ConnLimits {
        connection_timeout: config.connection_timeout,
        drain_timeout: config.drain_timeout,
    };
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // Tells every connection task to finish up; they also stop if this sender is dropped.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);

    loop {
        // Reap finished connections so the set does not grow with every scrape.
        while tasks.try_join_next().is_some() {}

        // The slot is taken before accepting: at the limit, new clients queue in the kernel
        // instead of costing us a task each.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => {
                slot.expect("the connection semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                tasks.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    peer,
                    Arc::clone(&app),
                    stop_rx.clone(),
                    limits,
                    slot,
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
    _slot: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(app.handle(request).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
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
}

impl Route {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/metrics" => Some(Self::Metrics),
            "/healthz" => Some(Self::Healthz),
            "/readyz" => Some(Self::Readyz),
            "/connections" => Some(Self::Connections),
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
                    tracing::warn!(error = %error_chain(&error), "serving /metrics");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n")
                }
            },
            Route::Healthz => text(StatusCode::OK, "ok"),
            Route::Readyz => {
                if self.state.ready() {
                    text(StatusCode::OK, "ready")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
            Route::Connections => match serde_json::to_vec(&self.state.connections()) {
                Ok(body) => with_type(StatusCode::OK, JSON_CONTENT_TYPE, body.into()),
                Err(error) => {
                    tracing::warn!(%error, "serializing connections for /connections");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "serializing connections failed\n")
                }
            },
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, TEXT_CONTENT_TYPE, Bytes::from_static(body.as_bytes()))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error with its causes, for a log line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
