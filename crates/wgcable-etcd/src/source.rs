//! [`EtcdSource`]: the [`EndpointSource`] implementation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient,
};
use futures::stream::BoxStream;
use tokio::sync::{Mutex, OnceCell};
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

    fn own_key(&self, _local: &wgcable_api::Endpoint) -> Option<ObjectKey> {
        self.shared.own_key().map(ObjectKey)
    }

    fn watch(&self) -> BoxStream<'static, SourceEvent> {
        let watcher = Watcher::new(self.shared.clone());
        Box::pin(futures::stream::unfold(watcher, |mut w| async move {
            let ev = w.next().await;
            Some((ev, w))
        }))
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
        publish::write(&mut publisher, &mut kv, self.shared.config.request_timeout).await?;
        Ok(())
    }

    async fn withdraw(&self, local: &Endpoint) -> Result<(), SourceError> {
        let key = self.shared.layout.key_of(&local.spec.cluster_id)?;
        let mut publisher = self.shared.publisher.lock().await;
        let mut kv = self.shared.kv().await?;
        publish::delete(
            &mut publisher,
            &mut kv,
            &key,
            self.shared.config.request_timeout,
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
