//! The file source: one directory shared by the gateways (a shared volume, a synced directory,
//! or one directory on one machine in tests and demos). Each gateway writes its Endpoint to
//! `DIR/<cluster-id>.yaml` and reads the others'.
//!
//! Only fetching happens here: regular files, never a link, never more than the size limit
//! plus one byte, each delivered only once two reads `settle` apart agree. Parsing, identity
//! and conflicts are admission's. The rules are in docs/security.md, "File source".

mod scan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use notify::Watcher;
use tokio::time::Instant;
use wgcable_api::Endpoint;

use crate::fsutil::{self, ReadOutcome};
use crate::{EndpointSource, ObjectKey, RawObject, SourceError, SourceEvent};

use scan::{ScanLimits, Scanner};
pub use scan::{BAD_NAME, NOT_REGULAR_FILE, SYMLINK, UNREADABLE};

/// What the file source is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSourceConfig {
    pub dir: PathBuf,
    /// The local cluster: its Endpoint is published at `DIR/<cluster_id>.yaml`.
    pub cluster_id: String,
    /// Full rescans besides inotify (the safety net for file systems where inotify sees
    /// nothing: network and some overlay file systems). Default 10 s.
    pub rescan_interval: Duration,
    /// How long a file must stay unchanged, over two reads, before it is delivered (torn
    /// in-place writes are never applied). Default 100 ms.
    pub settle: Duration,
    /// How long the first snapshot waits for files still changing. Default 2 s.
    pub startup_timeout: Duration,
    /// Most endpoint files read; beyond it the oldest are kept. Default 10,000.
    pub max_files: usize,
    /// Bytes read per file at most (plus one, so admission sees an oversized file as such);
    /// keep it equal to admission's `limits.max_bytes`. Default 32 KiB.
    pub max_file_bytes: usize,
}

impl FileSourceConfig {
    pub fn new(dir: impl Into<PathBuf>, cluster_id: impl Into<String>) -> Self {
        FileSourceConfig {
            dir: dir.into(),
            cluster_id: cluster_id.into(),
            rescan_interval: Duration::from_secs(10),
            settle: Duration::from_millis(100),
            startup_timeout: Duration::from_secs(2),
            max_files: 10_000,
            max_file_bytes: crate::admission::AdmissionConfig::default()
                .limits
                .max_bytes,
        }
    }
}

/// The embedded endpoint source over a shared directory.
#[derive(Debug)]
pub struct FileSource {
    config: FileSourceConfig,
}

impl FileSource {
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config }
    }

    fn own_name(&self) -> String {
        format!("{}.yaml", self.config.cluster_id)
    }

    fn own_path(&self) -> PathBuf {
        self.config.dir.join(self.own_name())
    }
}

/// Whether an inotify event only says that a file was opened, read or closed without writing.
/// Scans read every file, so waking up on those would make each scan trigger the next one,
/// forever (a busy loop that ate a core until the benchmarks caught it).
fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

fn failed(action: String, source: Option<std::io::Error>) -> SourceError {
    SourceError::Failed {
        action,
        source: source.map(|e| Box::new(e) as _),
    }
}

#[async_trait]
impl EndpointSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn preflight(&self) -> Result<(), SourceError> {
        use nix::unistd::{access, AccessFlags};
        let dir = self.config.dir.clone();
        let check = move || -> Result<(), SourceError> {
            let shown = dir.display();
            let meta = match std::fs::metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(failed(
                        format!(
                            "the broker directory {shown} does not exist: create it, or start the gateway with \
                             --broker-dir-create (every \
                             gateway sharing it must be able to read and write it)"
                        ),
                        None,
                    ))
                }
                Err(e) => {
                    return Err(failed(
                        format!("checking the broker directory {shown}"),
                        Some(e),
                    ))
                }
            };
            if !meta.is_dir() {
                return Err(failed(
                    format!("the broker directory {shown} is not a directory"),
                    None,
                ));
            }
            if let Err(e) = access(
                &dir,
                AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
            ) {
                return Err(failed(
                    format!(
                        "the broker directory {shown} is not readable and writable by this \
                         gateway: fix its owner or mode"
                    ),
                    Some(std::io::Error::from(e)),
                ));
            }
            if nix::sys::statvfs::statvfs(&dir)
                .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
            {
                return Err(failed(
                    format!("the broker directory {shown} is on a read-only file system"),
                    None,
                ));
            }
            Ok(())
        };
        tokio::task::spawn_blocking(check)
            .await
            .map_err(|e| failed(format!("checking the broker directory: {e}"), None))?
    }

    fn own_key(&self, _local: &wgcable_api::Endpoint) -> Option<ObjectKey> {
        Some(ObjectKey(self.own_name()))
    }

    fn watch(&self) -> BoxStream<'static, SourceEvent> {
        let config = self.config.clone();
        let (tx, wake) = tokio::sync::mpsc::channel(1);
        let watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if res.as_ref().is_ok_and(|e| is_read_only(&e.kind)) {
                    return;
                }
                // A full channel already holds a wake-up; the scan reads everything anyway.
                let _ = tx.try_send(());
            },
        ) {
            Ok(mut w) => match w.watch(&config.dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %config.dir.display(), error = %e, "cannot watch the broker directory; relying on periodic rescans");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; relying on periodic rescans of the broker directory");
                None
            }
        };
        let scanner = Scanner::new(
            config.dir.clone(),
            ScanLimits {
                max_files: config.max_files,
                max_file_bytes: config.max_file_bytes,
                settle: config.settle,
            },
        );
        let mut rescan =
            tokio::time::interval(config.rescan_interval.max(Duration::from_millis(100)));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.reset();
        let state = Watch {
            scanner: Some(scanner),
            wake: watcher.is_some().then_some(wake),
            _watcher: watcher,
            rescan: None,
            config,
            started: false,
            recheck_at: None,
            last_scan: None,
        };
        futures::stream::unfold(state, |mut w| async move {
            let events = w.next_events().await?;
            Some((futures::stream::iter(events), w))
        })
        .flatten()
        .boxed()
    }

    async fn publish(&self, local: &Endpoint) -> Result<(), SourceError> {
        let yaml = local.to_yaml().map_err(|e| SourceError::Failed {
            action: "encoding the local Endpoint as YAML".into(),
            source: Some(Box::new(e)),
        })?;
        let path = self.own_path();
        let limit = yaml.len();
        tokio::task::spawn_blocking(move || {
            // Rewriting identical content would wake every other gateway for nothing.
            if let Ok(ReadOutcome::Read { bytes, .. }) = fsutil::read_regular(&path, limit) {
                if bytes == yaml.as_bytes() {
                    return Ok(());
                }
            }
            fsutil::write_atomic(&path, yaml.as_bytes(), 0o644).map_err(|e| {
                failed(
                    format!(
                        "publishing the local Endpoint to {}: check that the broker directory \
                         is writable",
                        path.display()
                    ),
                    Some(e),
                )
            })
        })
        .await
        .map_err(|e| failed(format!("publishing the local Endpoint: {e}"), None))?
    }

    async fn withdraw(&self, _local: &Endpoint) -> Result<(), SourceError> {
        let path = self.own_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(
                format!("removing the local Endpoint {}", path.display()),
                Some(e),
            )),
        }
    }
}

/// The state of one `watch` stream.
struct Watch {
    /// Moved into the blocking pool for each scan.
    scanner: Option<Scanner>,
    wake: Option<tokio::sync::mpsc::Receiver<()>>,
    // Dropping the watcher stops its thread; it lives as long as the stream.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Made at the first wait, so that `watch` itself needs no runtime.
    rescan: Option<tokio::time::Interval>,
    config: FileSourceConfig,
    started: bool,
    recheck_at: Option<Instant>,
    last_scan: Option<Instant>,
}

impl Watch {
    /// The next events: the first snapshot, then changes. `None` only if scanning became
    /// impossible for good (the blocking pool is gone: the runtime is shutting down).
    async fn next_events(&mut self) -> Option<Vec<SourceEvent>> {
        if !self.started {
            self.started = true;
            return self.initial_snapshot().await;
        }
        loop {
            let full = self.wait().await;
            let (events, recheck) = self.scan(full).await?;
            self.recheck_at = recheck;
            if !events.is_empty() {
                return Some(events);
            }
        }
    }

    /// Scans until every file was read twice alike (or `startup_timeout`), then delivers
    /// everything as one snapshot, followed by the refusals and health found.
    async fn initial_snapshot(&mut self) -> Option<Vec<SourceEvent>> {
        let deadline = Instant::now() + self.config.startup_timeout;
        let mut objects: BTreeMap<ObjectKey, RawObject> = BTreeMap::new();
        let mut others: BTreeMap<ObjectKey, SourceEvent> = BTreeMap::new();
        let mut health = None;
        loop {
            let (events, recheck) = self.scan(true).await?;
            for event in events {
                match event {
                    SourceEvent::Apply(raw) => {
                        others.remove(&raw.key);
                        objects.insert(raw.key.clone(), raw);
                    }
                    SourceEvent::Delete(key) => {
                        objects.remove(&key);
                        others.remove(&key);
                    }
                    SourceEvent::Refused { key, problem } => {
                        objects.remove(&key);
                        others.insert(key.clone(), SourceEvent::Refused { key, problem });
                    }
                    SourceEvent::Health(h) => health = Some(h),
                    SourceEvent::Snapshot(_) => {}
                }
            }
            self.recheck_at = recheck;
            let settled = self.scanner.as_ref().is_some_and(Scanner::is_settled);
            match recheck {
                Some(at) if !settled && at < deadline => tokio::time::sleep_until(at).await,
                _ => break,
            }
        }
        let mut out = vec![SourceEvent::Snapshot(objects.into_values().collect())];
        out.extend(others.into_values());
        out.extend(health.map(SourceEvent::Health));
        Some(out)
    }

    /// Waits for a reason to scan; true for a full rescan.
    async fn wait(&mut self) -> bool {
        // At most one scan per `settle`: under a storm of inotify events the scans coalesce.
        if let Some(last) = self.last_scan {
            tokio::time::sleep_until(last + self.config.settle).await;
        }
        enum Why {
            Rescan,
            Recheck,
            Woke,
            WatcherGone,
        }
        let recheck = self.recheck_at;
        let why = {
            let recheck_timer = async move {
                match recheck {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            };
            let woke = async {
                match &mut self.wake {
                    Some(rx) => rx.recv().await.is_some(),
                    None => futures::future::pending().await,
                }
            };
            let rescan = self
                .rescan
                .get_or_insert_with(|| {
                    let period = self.config.rescan_interval.max(Duration::from_millis(100));
                    let mut rescan = tokio::time::interval_at(Instant::now() + period, period);
                    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    rescan
                })
                .tick();
            tokio::pin!(recheck_timer, woke, rescan);
            use futures::future::{select, Either};
            match select(select(rescan, recheck_timer), woke).await {
                Either::Left((Either::Left(_), _)) => Why::Rescan,
                Either::Left((Either::Right(_), _)) => Why::Recheck,
                Either::Right((true, _)) => Why::Woke,
                Either::Right((false, _)) => Why::WatcherGone,
            }
        };
        match why {
            Why::Rescan => true,
            Why::Recheck | Why::Woke => false,
            Why::WatcherGone => {
                // The watcher's thread is gone: rescans only from here on.
                self.wake = None;
                false
            }
        }
    }

    async fn scan(&mut self, full: bool) -> Option<(Vec<SourceEvent>, Option<Instant>)> {
        let mut scanner = self.scanner.take()?;
        let now = Instant::now();
        self.last_scan = Some(now);
        let std_now = now.into_std();
        let (scanner, result) = tokio::task::spawn_blocking(move || {
            let result = scanner.scan(std_now, full);
            (scanner, result)
        })
        .await
        .ok()?;
        self.scanner = Some(scanner);
        let recheck = result.recheck_at.map(Instant::from_std);
        Some((result.events, recheck))
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
    use notify::EventKind;

    #[test]
    fn reads_do_not_wake_the_source_but_changes_do() {
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
