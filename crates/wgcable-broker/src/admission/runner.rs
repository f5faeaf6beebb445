//! The thin async layer around [`Admission`]: parsing on the blocking pool under a deadline,
//! the registry file, logging, and a view for the HTTP server.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::config::{AdmissionConfig, LocalIdentity};
use super::core::{Admission, AdmissionUpdate, ConflictReport, Prepared};
use super::parse::{Candidate, ObjectParser};
use super::refusal::{Reason, Refusal};
use super::registry::{self, LoadNote, Registry};
use crate::debounce::Batch;
use crate::{RawObject, SourceError, SourceHealth};

/// What the HTTP server (`/conflicts`, for `wgcable show conflicts`) reads: the latest
/// report, replaced after every batch that changed it; reading never waits on admission.
#[derive(Clone, Debug, Default)]
pub struct AdmissionView(Arc<RwLock<Arc<ConflictReport>>>);

impl AdmissionView {
    pub fn get(&self) -> Arc<ConflictReport> {
        // A writer that panicked left a whole report behind: still worth showing.
        match self.0.read() {
            Ok(report) => report.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, report: ConflictReport) {
        let mut slot = match self.0.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(report);
    }
}

/// Runs admission for one gateway: `apply` each [`Batch`] from [`crate::debounce`] and hand
/// the [`AdmissionUpdate`] to the engine.
#[derive(Debug)]
pub struct AdmissionRunner {
    core: Admission,
    /// Where the registry lives; `None` keeps it in memory only (tests, benchmarks).
    state_dir: Option<PathBuf>,
    /// A registry write failed: try again after the next batch.
    registry_pending: bool,
    view: AdmissionView,
    last_republish_warning: Option<SystemTime>,
}

impl AdmissionRunner {
    /// Loads the registry from `state_dir` (a damaged one is moved aside and logged, never
    /// fatal) and starts admission from it.
    pub async fn open(
        config: AdmissionConfig,
        local: LocalIdentity,
        state_dir: &Path,
    ) -> Result<Self, SourceError> {
        let dir = state_dir.to_owned();
        let cluster = local.cluster_id.clone();
        let (max_bytes, max_entries) = (config.max_registry_bytes, config.max_objects);
        let (registry, note) =
            blocking(move || registry::load(&dir, &cluster, max_bytes, max_entries)).await??;
        let path = registry::path(state_dir);
        match &note {
            LoadNote::Fresh => {
                tracing::info!(registry = %path.display(), "no admission registry yet: every cluster is new (oldest in the source first)")
            }
            LoadNote::Loaded => {
                tracing::info!(registry = %path.display(), clusters = registry.clusters.len(), "loaded the admission registry: accepted clusters keep their subnets and seniority")
            }
            LoadNote::Corrupt { problem, moved_to } => tracing::warn!(
                registry = %path.display(),
                moved_to = %moved_to.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "nowhere (could not be moved)".into()),
                "the admission registry is damaged ({problem}); starting as on a first start"
            ),
            LoadNote::OtherCluster => {
                tracing::warn!(registry = %path.display(), "the admission registry belongs to another cluster; starting as on a first start")
            }
        }
        let mut runner = Self::with_registry(config, local, &registry);
        runner.state_dir = Some(state_dir.to_owned());
        Ok(runner)
    }

    /// Admission without a registry file (tests, benchmarks).
    pub fn in_memory(config: AdmissionConfig, local: LocalIdentity) -> Self {
        let registry = Registry::empty(&local.cluster_id);
        Self::with_registry(config, local, &registry)
    }

    /// Admission starting from `registry` that never writes it (`wgcable plan`: the decisions
    /// a restart would make, without changing anything).
    pub fn with_registry_in_memory(
        config: AdmissionConfig,
        local: LocalIdentity,
        registry: &Registry,
    ) -> Self {
        Self::with_registry(config, local, registry)
    }

    fn with_registry(config: AdmissionConfig, local: LocalIdentity, registry: &Registry) -> Self {
        let (core, notes) = Admission::new(config, local, registry);
        for note in notes {
            tracing::warn!("admission registry: {note}");
        }
        let runner = AdmissionRunner {
            core,
            state_dir: None,
            registry_pending: false,
            view: AdmissionView::default(),
            last_republish_warning: None,
        };
        runner.view.set(runner.core.report());
        runner
    }

    pub fn admission(&self) -> &Admission {
        &self.core
    }

    pub fn view(&self) -> AdmissionView {
        self.view.clone()
    }

    /// See [`Admission::set_published`].
    pub fn set_published(&mut self, published: wgcable_api::Endpoint) {
        self.core.set_published(published);
    }

    /// Parses what changed in `batch` (off the calling task, in parallel, under the deadline),
    /// applies it, persists the registry if it changed, and logs the warnings.
    pub async fn apply(&mut self, batch: Batch) -> AdmissionUpdate {
        let prepared = self.prepare(batch).await;
        let update = self.core.apply(prepared, SystemTime::now());
        self.after(&update).await;
        update
    }

    /// `wgcable admission forget CLUSTER` on a running gateway.
    pub async fn forget(&mut self, cluster_id: &str) -> AdmissionUpdate {
        let update = self.core.forget(cluster_id, SystemTime::now());
        tracing::info!(cluster = %cluster_id, "the admission registry forgot the cluster at an operator's request");
        self.after(&update).await;
        update
    }

    /// Logs the summary of suppressed warnings once the interval is over (call it on a timer,
    /// e.g. the status interval, so a summary is not held back until the next change).
    pub fn tick(&mut self) {
        if let Some(s) = self.core.tick(SystemTime::now()) {
            log_suppressed(s);
        }
    }

    async fn prepare(&self, batch: Batch) -> Prepared {
        let mut sorted = self.core.sort(batch);
        let objects = sorted.take_objects();
        let results = parse_all(objects, self.core.config(), self.core.parser()).await;
        sorted.complete(results)
    }

    async fn after(&mut self, update: &AdmissionUpdate) {
        for r in &update.warnings {
            tracing::warn!(object = %r.key, reason = %r.reason, "{}", r.message);
        }
        if let Some(s) = update.suppressed {
            log_suppressed(s);
        }
        if update.republish {
            let now = SystemTime::now();
            let interval = self.core.config().warn_interval;
            let due = self
                .last_republish_warning
                .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= interval));
            if due {
                self.last_republish_warning = Some(now);
                tracing::warn!(
                    object = %self.core.local().own_key.as_ref().map(|k| k.0.as_str()).unwrap_or("?"),
                    "the local Endpoint in the broker differs from what this gateway published \
                     (changed, replaced or removed by someone else); publishing it again"
                );
            }
        }
        match &update.health {
            Some(SourceHealth::Healthy) => tracing::info!("the endpoint source is healthy again"),
            Some(SourceHealth::Unhealthy(why)) => tracing::warn!(
                "the endpoint source is unhealthy: {why}; what is known stays in place"
            ),
            None => {}
        }
        if self.core.take_report_dirty() {
            self.view.set(self.core.report());
        }
        self.registry_pending |= self.core.take_registry_dirty();
        if let (true, Some(dir)) = (self.registry_pending, &self.state_dir) {
            let registry = self.core.registry();
            let dir = dir.clone();
            match blocking(move || registry::save(&dir, &registry)).await {
                Ok(Ok(())) => self.registry_pending = false,
                Ok(Err(e)) | Err(e) => tracing::warn!(
                    error = %crate::error_chain(&e),
                    "the admission registry was not saved; retrying after the next change \
                     (until then a restart may decide conflicts differently)"
                ),
            }
        }
    }
}

fn log_suppressed(s: super::Suppressed) {
    tracing::warn!(
        "{} more refusal warnings about {} objects in the last {}s were not logged; \
         `wgcable show conflicts` lists every current refusal",
        s.warnings,
        s.objects,
        s.interval.as_secs()
    );
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Failed {
            action: "running admission work on the blocking pool".into(),
            source: Some(Box::new(e)),
        })
}

enum Progress {
    Started(usize),
    Done(usize, Box<Result<Candidate, Refusal>>),
}

/// Parses `objects` on the blocking pool with `workers` threads pulling from one queue, so a
/// slow object holds up one thread only. An object still being parsed at the deadline is
/// refused (`parse_deadline`; its thread finishes on its own and the result is dropped);
/// objects not yet started get another round.
async fn parse_all(
    objects: Vec<RawObject>,
    config: &AdmissionConfig,
    parser: &ObjectParser,
) -> Vec<Result<Candidate, Refusal>> {
    let total = objects.len();
    let mut results: Vec<Option<Result<Candidate, Refusal>>> = (0..total).map(|_| None).collect();
    if total == 0 {
        return Vec::new();
    }
    let objects = Arc::new(objects);
    let parser = Arc::new(parser.clone());
    let workers = match config.parse_workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let mut remaining: Vec<usize> = (0..total).collect();
    while !remaining.is_empty() {
        let deadline = tokio::time::Instant::now() + config.parse_deadline;
        let std_deadline = std::time::Instant::now() + config.parse_deadline;
        let queue = Arc::new((remaining.clone(), AtomicUsize::new(0)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..workers.min(remaining.len()) {
            let (objects, parser, queue, tx) =
                (objects.clone(), parser.clone(), queue.clone(), tx.clone());
            // Detached on purpose: at the deadline the loop below stops waiting, and a
            // worker stuck in one object finishes it on its own.
            drop(tokio::task::spawn_blocking(move || {
                let (indices, next) = &*queue;
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = indices.get(at) else { break };
                    if std::time::Instant::now() >= std_deadline {
                        break;
                    }
                    if tx.send(Progress::Started(index)).is_err() {
                        break;
                    }
                    let result = parser.parse(&objects[index]);
                    if tx.send(Progress::Done(index, Box::new(result))).is_err() {
                        break;
                    }
                }
            }));
        }
        drop(tx);
        let mut started = std::collections::BTreeSet::new();
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Progress::Started(i))) => {
                    started.insert(i);
                }
                Ok(Some(Progress::Done(i, result))) => results[i] = Some(*result),
                Ok(None) | Err(_) => break,
            }
        }
        let mut next_round = Vec::new();
        for i in remaining {
            if results[i].is_some() {
                continue;
            }
            if started.contains(&i) || started.is_empty() {
                // Still parsing at the deadline (or nothing could even start).
                let key = &objects[i].key;
                results[i] = Some(Err(Refusal::new(
                    key,
                    Reason::ParseDeadline,
                    format!(
                        "{key}: refused: parsing took longer than {} (parse_deadline); the object \
                         is considered again when it changes",
                        humanize(config.parse_deadline)
                    ),
                )));
            } else {
                next_round.push(i);
            }
        }
        remaining = next_round;
    }
    results
        .into_iter()
        .map(|r| r.expect("every object has a result once no object remains"))
        .collect()
}

fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, ObjectKey, SourceEvent};
    use wgcable_api::{Endpoint, EndpointSpec, PublicKey};

    fn local() -> LocalIdentity {
        LocalIdentity {
            cluster_id: "b".into(),
            public_key: PublicKey::from_bytes([2; 32]),
            subnets: vec!["10.2.0.0/16".parse().expect("cidr")],
            underlay: vec![],
            own_key: None,
            published: Endpoint::new(EndpointSpec::default()),
        }
    }

    fn object(cluster: &str, n: u8) -> RawObject {
        let mut spec = EndpointSpec {
            cluster_id: cluster.into(),
            subnets: vec![format!("10.{n}.0.0/16")],
            private_ip: format!("172.16.0.{n}"),
            backend: "wireguard".into(),
            ..EndpointSpec::default()
        };
        spec.set_public_key(&PublicKey::from_bytes([n; 32]));
        RawObject {
            key: ObjectKey(format!("{cluster}.yaml")),
            bound_cluster: Some(cluster.into()),
            format: Format::Yaml,
            bytes: Endpoint::new(spec).to_yaml().expect("yaml").into_bytes(),
            created: Some(u64::from(n)),
            version: None,
        }
    }

    fn batch(objects: Vec<RawObject>) -> Batch {
        let mut batch = Batch::default();
        batch.fold(SourceEvent::Snapshot(objects));
        batch
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parses_in_parallel_and_persists_the_registry() {
        let state = tempfile::tempdir().expect("temp dir");
        let config = AdmissionConfig {
            parse_workers: 3,
            ..AdmissionConfig::default()
        };
        let mut runner = AdmissionRunner::open(config.clone(), local(), state.path())
            .await
            .expect("open");
        let objects: Vec<RawObject> = (10..60).map(|n| object(&format!("c{n}"), n)).collect();
        let update = runner.apply(batch(objects)).await;
        assert_eq!(update.upserted.len(), 50);
        assert!(update.refused.is_empty(), "{:?}", update.refused);
        let saved = std::fs::read(registry::path(state.path())).expect("registry written");
        let saved: Registry = serde_json::from_slice(&saved).expect("json");
        assert_eq!(saved.clusters.len(), 50);
        let view = runner.view().get();
        assert_eq!(view.clusters.len(), 50);
        // Forgetting one on a running gateway: written at once.
        let update = runner.forget("c10").await;
        assert_eq!(
            update.removed,
            Vec::<String>::new(),
            "its object is still there"
        );
        assert_eq!(update.upserted.len(), 1);
        let reopened = AdmissionRunner::open(config, local(), state.path())
            .await
            .expect("open");
        let c10 = reopened
            .admission()
            .registry()
            .clusters
            .into_iter()
            .find(|c| c.cluster_id == "c10")
            .expect("c10");
        assert_eq!(c10.seniority, 51, "the newest now");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_not_parsed_by_the_deadline_are_refused() {
        let config = AdmissionConfig {
            parse_deadline: Duration::ZERO,
            ..AdmissionConfig::default()
        };
        let mut runner = AdmissionRunner::in_memory(config, local());
        let update = runner
            .apply(batch(vec![object("c1", 11), object("c2", 12)]))
            .await;
        let reasons: Vec<_> = update.refused.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["parse_deadline", "parse_deadline"]);
        assert!(update.upserted.is_empty());
        assert!(update.refused[0].message.contains("parse_deadline"));
    }
}
