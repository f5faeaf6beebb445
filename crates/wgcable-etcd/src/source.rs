//! [`EtcdSource`]: the [`EndpointSource`] implementation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient,
};
use futures::stream::{BoxStream, Stream};
use tokio::sync::{mpsc, Mutex, OnceCell};
use tokio::task::JoinHandle;
use wgcable_api::Endpoint;
use wgcable_broker::{EndpointSource, ObjectKey, Role, SourceError, SourceEvent};

use crate::config::EtcdConfig;
use crate::layout::Layout;
use crate::publish::{self, Publisher};
use crate::tracker::Limits;
use crate::watch::Watcher;
use crate::Error;

/// Counters of what the source did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EtcdStats {
    /// Keys under `<prefix>/endpoints/` that do not match the layout, each time one was seen.
    pub ignored_keys: u64,
    /// Full listings (the first, and one after each compaction or limit crossing).
    pub relists: u64,
    /// Watches opened (the first, and one after each reconnect).
    pub watches: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub ignored_keys: AtomicU64,
    pub relists: AtomicU64,
    pub watches: AtomicU64,
}

/// What the source and its watch stream share.
pub(crate) struct Shared {
    pub config: EtcdConfig,
    pub layout: Layout,
    pub limits: Limits,
    client: OnceCell<Client>,
    pub publisher: Mutex<Publisher>,
    /// The local cluster's key, once published (the watch checks events on it).
    own_key: StdMutex<Option<String>>,
    pub stats: Stats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The client, created on first use. Creating it does no network I/O (the channel
    /// connects to the members in the background, and again whenever one comes back).
    async fn client(&self) -> Result<&Client, Error> {
        self.client
            .get_or_try_init(|| async {
                let c = &self.config;
                let mut opts = ConnectOptions::new()
                    .with_connect_timeout(c.connect_timeout)
                    // etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`);
                    // the progress probe finds a dead path sooner.
                    .with_keep_alive(Duration::from_secs(10), c.request_timeout)
                    .with_keep_alive_while_idle(true)
                    // A member cut off from the others' quorum refuses requests and ends our
                    // watch instead of serving what it had.
                    .with_require_leader(true);
                if c.tls() {
                    opts = opts.with_tls(tls_options(c)?);
                }
                Client::connect(&c.endpoints, Some(opts))
                    .await
                    .map_err(|e| Error::Config {
                        what: format!(
                            "--etcd-endpoints {}: cannot set up the etcd client: {e}",
                            c.endpoints.join(",")
                        ),
                    })
            })
            .await
    }

    pub async fn kv(&self) -> Result<KvClient, Error> {
        Ok(self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(self.config.max_message_bytes))
    }

    pub async fn watch(&self) -> Result<WatchClient, Error> {
        Ok(self
            .client()
            .await?
            .watch_client()
            .max_decoding_message_size(self.config.max_message_bytes))
    }

    pub fn own_key(&self) -> Option<String> {
        self.own_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn tls_options(c: &EtcdConfig) -> Result<TlsOptions, Error> {
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Tls {
            flag,
            path: path.to_path_buf(),
            problem: format!("cannot be read: {e}"),
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &c.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cacert", ca)?));
    }
    if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
        tls = tls.identity(Identity::from_pem(
            read("--etcd-cert", cert)?,
            read("--etcd-key", key)?,
        ));
    }
    Ok(tls)
}

/// The etcd endpoint source (see the crate docs for the layout and its rules).
#[derive(Debug, Clone)]
pub struct EtcdSource {
    shared: Arc<Shared>,
}

impl EtcdSource {
    /// Checks the configuration (no I/O; [`EndpointSource::preflight`] reads the TLS files).
    pub fn new(config: EtcdConfig) -> Result<EtcdSource, Error> {
        let layout = config.validate()?;
        let own_key = match &config.local_cluster {
            Some(id) => Some(layout.key_of(id)?),
            None => None,
        };
        let limits = Limits {
            max_value_bytes: config.max_value_bytes,
            max_objects: config.max_objects,
            max_total_bytes: config.max_total_bytes,
        };
        Ok(EtcdSource {
            shared: Arc::new(Shared {
                config,
                layout,
                limits,
                client: OnceCell::new(),
                publisher: Mutex::new(Publisher::default()),
                own_key: StdMutex::new(own_key),
                stats: Stats::default(),
            }),
        })
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The key a cluster's Endpoint is published at.
    pub fn key_of(&self, cluster_id: &str) -> Result<String, Error> {
        self.shared.layout.key_of(cluster_id)
    }

    /// What the source counted so far.
    pub fn stats(&self) -> EtcdStats {
        let s = &self.shared.stats;
        EtcdStats {
            ignored_keys: s.ignored_keys.load(Ordering::Relaxed),
            relists: s.relists.load(Ordering::Relaxed),
            watches: s.watches.load(Ordering::Relaxed),
        }
    }

    /// Why this gateway stopped writing its key, if another writer superseded it.
    pub async fn superseded(&self) -> Option<String> {
        self.shared
            .publisher
            .lock()
            .await
            .superseded()
            .map(str::to_string)
    }

    fn encode(&self, local: &Endpoint) -> Result<(String, Vec<u8>), Error> {
        let key = self.shared.layout.key_of(&local.spec.cluster_id)?;
        let yaml = local.to_yaml().map_err(|e| Error::Config {
            what: format!("encoding the local Endpoint for {key}: {e}"),
        })?;
        if yaml.len() > self.shared.config.max_value_bytes {
            return Err(Error::Config {
                what: format!(
                    "the local Endpoint is {} bytes, more than the {} bytes other gateways accept",
                    yaml.len(),
                    self.shared.config.max_value_bytes
                ),
            });
        }
        Ok((key, yaml.into_bytes()))
    }
}

#[async_trait]
impl EndpointSource for EtcdSource {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn preflight(&self) -> Result<(), SourceError> {
        self.shared.config.validate()?;
        self.shared.config.check_files()?;
        // Builds the channel and the TLS connector (parses the URLs and the PEM the way the
        // connection will); connects to nothing.
        self.shared.client().await?;
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("relist", s.relists),
            ("watch", s.watches),
            ("ignored_key", s.ignored_keys),
        ]
    }

    fn own_key(&self, _local: &wgcable_api::Endpoint) -> Option<ObjectKey> {
        self.shared.own_key().map(ObjectKey)
    }

    fn watch(&self) -> BoxStream<'static, SourceEvent> {
        Box::pin(Spawned::new(Watcher::new(self.shared.clone())))
    }

    async fn publish(&self, local: &Endpoint) -> Result<(), SourceError> {
        let (key, bytes) = self.encode(local)?;
        *self
            .shared
            .own_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key.clone());
        let mut publisher = self.shared.publisher.lock().await;
        if !publisher.want(key, bytes)? {
            return Ok(());
        }
        let mut kv = self.shared.kv().await?;
        // On failure the Endpoint stays wanted: the watch writes it as soon as etcd answers.
        let c = &self.shared.config;
        publish::write(
            &mut publisher,
            &mut kv,
            c.request_timeout,
            c.endpoints.len(),
        )
        .await?;
        Ok(())
    }

    async fn withdraw(&self, local: &Endpoint) -> Result<(), SourceError> {
        let key = self.shared.layout.key_of(&local.spec.cluster_id)?;
        let mut publisher = self.shared.publisher.lock().await;
        let mut kv = self.shared.kv().await?;
        let c = &self.shared.config;
        publish::delete(
            &mut publisher,
            &mut kv,
            &key,
            c.request_timeout,
            c.endpoints.len(),
        )
        .await?;
        tracing::info!(key = %key, "withdrew the local Endpoint from etcd");
        Ok(())
    }

    async fn set_role(&self, role: &Role) {
        if role.is_leader() {
            // Leading again: the elector vouches that we are the one writer now, so the next
            // write takes the key over whatever a former leader left there.
            self.shared.publisher.lock().await.new_term();
        }
    }
}

/// Events the watcher may be ahead of its consumer by; beyond it, the watcher waits.
const AHEAD: usize = 64;

/// The watch stream: the [`Watcher`] runs in a task of its own, started at the first poll,
/// and hands its events over a bounded channel; dropping the stream stops the task.
///
/// Why not poll the watcher inside the consumer's `poll_next`: the watcher writes this
/// cluster's key when etcd answers again, holding the publisher's lock across the write. A
/// consumer that stops polling the stream and awaits [`EtcdSource::publish`] (the gateway
/// does, between two batches) would then wait for a lock held by a future nobody polls: a
/// deadlock, seen in the `etcd-down` e2e (the restarted gateway never republished). In a
/// task, the watcher also keeps answering its progress probes while the consumer is busy
/// with a long reconcile, instead of timing out and reporting a healthy etcd as down.
struct Spawned {
    watcher: Option<Watcher>,
    events: Option<mpsc::Receiver<SourceEvent>>,
    task: Option<JoinHandle<()>>,
}

impl Spawned {
    fn new(watcher: Watcher) -> Spawned {
        Spawned {
            watcher: Some(watcher),
            events: None,
            task: None,
        }
    }
}

impl Stream for Spawned {
    type Item = SourceEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SourceEvent>> {
        // Started here, not in `watch()`: the stream may be made outside a runtime and
        // polled inside one.
        if let Some(mut watcher) = self.watcher.take() {
            let (tx, rx) = mpsc::channel(AHEAD);
            self.task = Some(tokio::spawn(async move {
                loop {
                    let ev = watcher.next().await;
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }));
            self.events = Some(rx);
        }
        match self.events.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
