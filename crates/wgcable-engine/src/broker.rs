//! Endpoint exchange between gateways.
//!
//! [`EndpointSource`] is the seam: the gateway loop only sees "this cluster's Endpoint is now
//! X" and "this cluster is gone". [`FileBroker`] is the embedded implementation: every gateway
//! writes its own Endpoint custom resource to `DIR/<cluster_id>.yaml` and watches `DIR` for the
//! others. A Kubernetes source (Submariner's Endpoint CRDs in the broker cluster) can sit beside
//! it without the engine changing.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::Watcher;
use tokio::sync::mpsc;
use wgcable_api::Endpoint;
use wgcable_metrics::GatewayMetrics;

use crate::Error;

/// A change of a remote cluster's Endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointEvent {
    /// The cluster's Endpoint appeared or changed (it has been parsed and validated).
    Upsert(Box<Endpoint>),
    /// The cluster's Endpoint is gone.
    Remove {
        /// The cluster that left.
        cluster_id: String,
    },
}

/// Where remote Endpoints come from and where the local one is published.
#[async_trait]
pub trait EndpointSource: Send {
    /// Publishes the local cluster's Endpoint.
    async fn publish(&mut self, endpoint: &Endpoint) -> Result<(), Error>;
    /// Every remote Endpoint known right now (used once at start, before the first reconcile,
    /// so that a restarted gateway sees the whole picture and removes no peer by mistake).
    async fn snapshot(&mut self) -> Result<Vec<Endpoint>, Error>;
    /// The next change; `None` when the source has ended.
    async fn next(&mut self) -> Option<EndpointEvent>;
}

/// What the broker remembers of one file.
#[derive(Debug)]
struct FileState {
    /// The raw content last read, to tell a real change from a touch.
    content: Vec<u8>,
    /// The last content that parsed and validated, if any.
    good: Option<Endpoint>,
}

/// The embedded file broker: a directory shared by the gateways (a shared volume, a synced
/// directory, or simply one directory on one machine in tests and demos).
#[derive(Debug)]
pub struct FileBroker {
    dir: PathBuf,
    own_cluster: String,
    files: BTreeMap<PathBuf, FileState>,
    /// Which cluster each file last announced, to emit the right removals.
    clusters: BTreeMap<String, PathBuf>,
    pending: VecDeque<EndpointEvent>,
    wake: mpsc::Receiver<()>,
    rescan: tokio::time::Interval,
    metrics: Option<Arc<GatewayMetrics>>,
    // Dropping the watcher stops its thread; it lives as long as the broker.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FileBroker {
    /// Opens (creating if needed) the broker directory and starts watching it.
    ///
    /// inotify gives prompt reactions; the periodic `rescan` is the safety net for file
    /// systems where inotify sees nothing (network and some overlay file systems).
    pub fn open(
        dir: impl Into<PathBuf>,
        own_cluster: impl Into<String>,
        rescan: Duration,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Result<Self, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!(
            "creating broker directory {}",
            dir.display()
        )))?;
        let (tx, wake) = mpsc::channel(1);
        let watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if res.as_ref().is_ok_and(|e| is_read_only(&e.kind)) {
                    return;
                }
                // A full channel already holds a wake-up; the rescan reads everything anyway.
                let _ = tx.try_send(());
            },
        ) {
            Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch broker directory; relying on periodic rescans");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; relying on periodic rescans of the broker directory");
                None
            }
        };
        let mut rescan = tokio::time::interval(rescan.max(Duration::from_millis(100)));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(FileBroker {
            dir,
            own_cluster: own_cluster.into(),
            files: BTreeMap::new(),
            clusters: BTreeMap::new(),
            pending: VecDeque::new(),
            wake,
            rescan,
            metrics,
            _watcher: watcher,
        })
    }

    /// The path the local cluster's Endpoint is published at.
    pub fn own_path(&self) -> PathBuf {
        self.dir.join(format!("{}.yaml", self.own_cluster))
    }

    /// Reads the directory and queues events for what changed since the last scan.
    fn scan(&mut self) -> Result<(), Error> {
        let own = self.own_path();
        let mut seen = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(Error::io(format!(
            "reading broker directory {}",
            self.dir.display()
        )))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Hidden files are our own (and others') temporary files of atomic writes.
            if name.starts_with('.') || path == own {
                continue;
            }
            if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
                continue;
            }
            match std::fs::read(&path) {
                Ok(content) => {
                    seen.insert(path, content);
                }
                // Removed between read_dir and read: treat as gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read endpoint file; keeping its last good state");
                    if let Some(old) = self.files.get(&path) {
                        seen.insert(path, old.content.clone());
                    }
                }
            }
        }

        // Files that are gone: their clusters leave.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                if let Some(ep) = state.good {
                    self.forget(&ep.spec.cluster_id, &path);
                }
            }
        }

        for (path, content) in seen {
            if self.files.get(&path).is_some_and(|s| s.content == content) {
                continue;
            }
            let parsed = parse_endpoint(&path, &content);
            let previous = self.files.get(&path).and_then(|s| s.good.clone());
            match parsed {
                Ok(ep) => {
                    let cluster = ep.spec.cluster_id.clone();
                    if let Some(owner) = self.clusters.get(&cluster).filter(|p| **p != path) {
                        // Two files claim one cluster: the first one keeps it.
                        tracing::warn!(file = %path.display(), cluster = %cluster, owner = %owner.display(),
                            "endpoint file claims a cluster another file already announces; ignored");
                        self.reject("duplicate");
                        self.files.insert(
                            path,
                            FileState {
                                content,
                                good: None,
                            },
                        );
                        continue;
                    }
                    if let Some(prev) = &previous {
                        if prev.spec.cluster_id != cluster {
                            self.forget(&prev.spec.cluster_id.clone(), &path);
                        }
                    }
                    self.clusters.insert(cluster, path.clone());
                    if previous.as_ref() != Some(&ep) {
                        self.pending
                            .push_back(EndpointEvent::Upsert(Box::new(ep.clone())));
                    }
                    self.files.insert(
                        path,
                        FileState {
                            content,
                            good: Some(ep),
                        },
                    );
                }
                Err(reason) => {
                    let (kind, message) = reason;
                    tracing::warn!(file = %path.display(), problem = %message,
                        "rejected endpoint file; the last good state of that cluster (if any) is kept");
                    self.reject(kind);
                    self.files.insert(
                        path,
                        FileState {
                            content,
                            good: previous,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn forget(&mut self, cluster_id: &str, path: &Path) {
        if self.clusters.get(cluster_id).is_some_and(|p| p == path) {
            self.clusters.remove(cluster_id);
            self.pending.push_back(EndpointEvent::Remove {
                cluster_id: cluster_id.to_string(),
            });
        }
    }

    fn reject(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.inc_endpoint_rejected(reason);
        }
    }
}

/// Whether an inotify event only says that a file was opened, read or closed without writing.
/// Scans read every file, so waking up on those would make each scan trigger the next one,
/// forever (a busy loop that ate a core until the benchmarks caught it).
fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// Parses and validates one endpoint file; the error is (metric reason, message).
fn parse_endpoint(path: &Path, content: &[u8]) -> Result<Endpoint, (&'static str, String)> {
    let text = std::str::from_utf8(content)
        .map_err(|_| ("parse", "file is not UTF-8 text".to_string()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let endpoint = if is_json {
        Endpoint::from_json(text)
    } else {
        Endpoint::from_yaml(text)
    }
    .map_err(|e| ("parse", crate::error::chain(&e)))?;
    endpoint
        .spec
        .validate()
        .map_err(|e| ("invalid", e.to_string()))?;
    Ok(endpoint)
}

/// Writes `content` to `path` atomically: a hidden temporary file in the same directory,
/// fsync, rename over the target, fsync the directory. Readers see the old or the new file,
/// never a torn one.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let action = || format!("writing {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".wgcable-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io(action()))?;
    tmp.write_all(content).map_err(Error::io(action()))?;
    tmp.as_file().sync_all().map_err(Error::io(action()))?;
    // Endpoints are public: other gateways (possibly other users) must be able to read them.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io(action()))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::io(action())(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[async_trait]
impl EndpointSource for FileBroker {
    async fn publish(&mut self, endpoint: &Endpoint) -> Result<(), Error> {
        let yaml = endpoint.to_yaml().map_err(|e| Error::Io {
            action: "encoding the local Endpoint as YAML".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = self.own_path();
        // Rewriting identical content would wake every other gateway for nothing.
        if std::fs::read(&path).is_ok_and(|c| c == yaml.as_bytes()) {
            return Ok(());
        }
        write_atomic(&path, yaml.as_bytes())
    }

    async fn snapshot(&mut self) -> Result<Vec<Endpoint>, Error> {
        self.scan()?;
        // The snapshot stands for all pending changes.
        self.pending.clear();
        Ok(self.files.values().filter_map(|f| f.good.clone()).collect())
    }

    async fn next(&mut self) -> Option<EndpointEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            tokio::select! {
                _ = self.rescan.tick() => {}
                woke = self.wake.recv() => {
                    if woke.is_none() {
                        // The watcher is gone; keep going on rescans alone.
                        self.rescan.tick().await;
                    }
                }
            }
            if let Err(e) = self.scan() {
                tracing::warn!(error = %crate::error::chain(&e), "scanning the broker directory failed; retrying at the next rescan");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
    use notify::EventKind;

    #[test]
    fn reads_do_not_wake_the_broker_but_changes_do() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(super::is_read_only(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(!super::is_read_only(&kind), "{kind:?}");
        }
    }
}
