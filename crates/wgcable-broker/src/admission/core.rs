//! The pure core of admission: objects in, the admitted set's changes out. No I/O, no clock
//! (`now` is a parameter), so every rule is table-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wgcable_api::{Endpoint, PublicKey, ValidatedSpec, BACKEND_WIREGUARD};

use super::config::{AdmissionConfig, LocalIdentity};
use super::index::{GatewayIndex, KeyIndex, SubnetIndex};
use super::parse::{Candidate, Fingerprint, ObjectParser};
use super::refusal::{Reason, Refusal};
use super::registry::{Entry, RegisteredCluster, Registry};
use super::warn::{Suppressed, WarnLimiter};
use crate::debounce::{Batch, Change};
use crate::{ObjectKey, RawObject, SourceHealth, SourceProblem};

/// A remote cluster's Endpoint as admitted: trusted from here on, typed once.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmittedEndpoint {
    pub cluster_id: String,
    /// The object it came from.
    pub key: ObjectKey,
    pub endpoint: Endpoint,
    /// `endpoint.spec`, parsed and checked: nothing below admission parses a string again.
    /// Shared: hand it to the planner as it is (`PeerCandidate::spec`).
    pub spec: Arc<ValidatedSpec>,
    /// Smaller is older. The admitted set never holds two clusters claiming one subnet or
    /// key, so the engine needs it only to keep a stable order.
    pub seniority: u64,
}

/// One batch of source events, after parsing (see [`super::AdmissionRunner`], which builds
/// it from a [`crate::debounce::Batch`]).
#[derive(Debug, Default)]
pub struct Prepared {
    /// `items` is everything the source holds: objects not listed are gone.
    pub snapshot: bool,
    pub items: Vec<(ObjectKey, Item)>,
    pub health: Option<SourceHealth>,
}

/// What happened to one object in a batch.
#[derive(Debug)]
pub enum Item {
    /// Delivered again with the content admission already judged.
    Unchanged,
    /// New or changed content, parsed (or refused by the parser).
    Parsed {
        fingerprint: Fingerprint,
        created: Option<u64>,
        bound: Option<String>,
        result: Box<Result<Candidate, Refusal>>,
    },
    Gone,
    /// The source would not read it (see [`crate::SourceEvent::Refused`]).
    SourceRefused(SourceProblem),
}

/// A batch sorted into what admission has already judged and what must be parsed first
/// (see [`Admission::sort`]).
#[derive(Debug)]
pub struct ToParse {
    prepared: Prepared,
    /// (index into `prepared.items`, fingerprint, creation order, bound cluster)
    slots: Vec<(usize, Fingerprint, Option<u64>, Option<String>)>,
    objects: Vec<RawObject>,
}

impl ToParse {
    /// The objects to parse, in order.
    pub fn objects(&self) -> &[RawObject] {
        &self.objects
    }

    /// Takes the objects to parse (to move them to the parsing threads without a copy).
    pub fn take_objects(&mut self) -> Vec<RawObject> {
        std::mem::take(&mut self.objects)
    }

    /// Fills in the parse results (one per object, in order).
    pub fn complete(self, results: Vec<Result<Candidate, Refusal>>) -> Prepared {
        let mut prepared = self.prepared;
        for ((index, fingerprint, created, bound), result) in self.slots.into_iter().zip(results) {
            prepared.items[index].1 = Item::Parsed {
                fingerprint,
                created,
                bound,
                result: Box::new(result),
            };
        }
        prepared
    }
}

/// What changed in one batch: everything the engine and the logs need.
///
/// The engine applies `removed` first, then `upserted` (in order: by seniority), and plans
/// only these clusters: one changed Endpoint among 1,000 is one upsert.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdmissionUpdate {
    /// The batch held a full snapshot of the source (the first batch always does). After the
    /// first one, [`Admission::admitted`] is the whole set the engine starts from.
    pub snapshot: bool,
    /// New or changed admitted Endpoints, oldest cluster first. An upsert replaces what the
    /// engine holds for that cluster.
    pub upserted: Vec<Arc<AdmittedEndpoint>>,
    /// Clusters no longer admitted.
    pub removed: Vec<String>,
    /// Refusals decided in this batch (a new object, new content or a new reason): count
    /// them by `reason.as_str()`. An object refused again for the same reason is not repeated.
    pub refused: Vec<Refusal>,
    /// The subset of `refused` to log now (rate-limited, see [`AdmissionConfig`]).
    pub warnings: Vec<Refusal>,
    /// Warnings suppressed in the interval that just ended.
    pub suppressed: Option<Suppressed>,
    /// The object at our own key differs from what we published, or is gone: publish again.
    pub republish: bool,
    /// The source's health changed.
    pub health: Option<SourceHealth>,
}

impl AdmissionUpdate {
    /// Nothing for the engine to do (refusals and warnings aside).
    pub fn is_noop(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty() && !self.republish
    }
}

/// What an operator sees: `wgcable show conflicts`. Serializable, to travel over HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictReport {
    /// Objects whose latest content is not admitted, by key.
    pub refused: Vec<RefusedObject>,
    /// Every cluster that holds something, oldest first.
    pub clusters: Vec<ClusterHolding>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedObject {
    pub key: String,
    /// The cluster claimed, when the claim passed validation.
    pub cluster: Option<String>,
    pub reason: String,
    pub message: String,
    /// Admitted on its own once the conflict is gone.
    pub waiting: bool,
    /// The cluster holding what this object wants.
    pub conflicts_with: Option<String>,
    /// The cluster this object holds anyway (with its last accepted content).
    pub holds: Option<String>,
    /// Since when (seconds since the Unix epoch).
    pub since: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHolding {
    pub cluster_id: String,
    pub key: String,
    pub seniority: u64,
    /// False while its object is refused or not yet seen since a restart: its subnets and key
    /// stay reserved for it.
    pub admitted: bool,
    pub admitted_at: u64,
}

/// What a cluster holds: no other cluster may claim any of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claims {
    public_key: PublicKey,
    subnets: Vec<IpNet>,
    gateway_ips: Vec<IpAddr>,
}

impl Claims {
    fn of(candidate: &Candidate) -> Option<Self> {
        Some(Claims {
            public_key: candidate.spec.public_key?,
            subnets: candidate.spec.subnets.clone(),
            gateway_ips: candidate.gateway_ips.clone(),
        })
    }
}

#[derive(Debug)]
struct ClusterEntry {
    holder: ObjectKey,
    seniority: u64,
    claims: Claims,
    /// None while its object is refused or not yet seen since a restart.
    admitted: Option<Arc<AdmittedEndpoint>>,
    admitted_at: u64,
}

#[derive(Debug)]
struct ObjectEntry {
    /// None for an object the source refused to read.
    fingerprint: Option<Fingerprint>,
    created: Option<u64>,
    /// The latest content, when it passed parsing and the per-object rules.
    candidate: Option<Arc<Candidate>>,
    /// The cluster this object holds.
    holds: Option<String>,
    /// Why the latest content is not admitted, and since when.
    refusal: Option<(Refusal, SystemTime)>,
}

/// Changes collected while a batch is applied.
#[derive(Default)]
struct Changes {
    upserted: BTreeMap<String, Arc<AdmittedEndpoint>>,
    removed: BTreeSet<String>,
    refused: Vec<Refusal>,
    warnings: Vec<Refusal>,
    republish: bool,
    released: bool,
}

/// The admission state of one gateway and its endpoint source.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    local: LocalIdentity,
    parser: ObjectParser,
    objects: HashMap<ObjectKey, ObjectEntry>,
    clusters: HashMap<String, ClusterEntry>,
    by_seniority: BTreeMap<u64, String>,
    /// Holders remembered by the registry that the source has not delivered yet.
    unseen: HashMap<ObjectKey, String>,
    /// Objects with valid content refused for a conflict: re-judged when something is freed.
    waiting: BTreeSet<ObjectKey>,
    subnets: SubnetIndex,
    keys: KeyIndex,
    gateways: GatewayIndex,
    next_seniority: u64,
    /// What was last judged at our own key.
    own_fingerprint: Option<Fingerprint>,
    synced: bool,
    health: SourceHealth,
    warn: WarnLimiter,
    registry_dirty: bool,
    report_dirty: bool,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Admission {
    /// Starts from what the registry remembers. Entries that conflict with an older one (the
    /// file was edited) are dropped and described in the returned notes, for the log.
    pub fn new(
        config: AdmissionConfig,
        local: LocalIdentity,
        registry: &Registry,
    ) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        let warn = WarnLimiter::new(config.warn_interval, config.max_warnings_per_interval);
        let mut admission = Admission {
            objects: HashMap::new(),
            clusters: HashMap::new(),
            by_seniority: BTreeMap::new(),
            unseen: HashMap::new(),
            waiting: BTreeSet::new(),
            subnets: SubnetIndex::default(),
            keys: KeyIndex::default(),
            gateways: GatewayIndex::default(),
            next_seniority: registry.next_seniority.max(1),
            own_fingerprint: None,
            synced: false,
            health: SourceHealth::Healthy,
            warn,
            registry_dirty: false,
            report_dirty: true,
            parser: ObjectParser::new(&config, &local),
            config,
            local,
        };
        let entries = match registry.entries(admission.config.max_objects) {
            Ok(entries) => entries,
            Err(problem) => {
                notes.push(format!("the registry was not used: {problem}"));
                Vec::new()
            }
        };
        for Entry {
            cluster_id,
            key,
            seniority,
            public_key,
            subnets,
            gateway_ips,
            admitted_at,
        } in entries
        {
            let claims = Claims {
                public_key,
                subnets,
                gateway_ips,
            };
            if let Some(other) = admission.conflict_with(&cluster_id, &claims) {
                notes.push(format!(
                    "registry entry for cluster {cluster_id} conflicts with older cluster \
                     {other}; dropped"
                ));
                admission.registry_dirty = true;
                continue;
            }
            admission.insert_claims(&cluster_id, &claims);
            admission.by_seniority.insert(seniority, cluster_id.clone());
            admission.unseen.insert(key.clone(), cluster_id.clone());
            admission.clusters.insert(
                cluster_id,
                ClusterEntry {
                    holder: key,
                    seniority,
                    claims,
                    admitted: None,
                    admitted_at,
                },
            );
        }
        (admission, notes)
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    pub fn local(&self) -> &LocalIdentity {
        &self.local
    }

    /// The parser objects go through (the runner shares it with its parsing threads).
    pub fn parser(&self) -> &ObjectParser {
        &self.parser
    }

    /// The Endpoint we publish changed (a new address, key or subnets): objects at our own
    /// key are compared with this one from now on.
    pub fn set_published(&mut self, published: Endpoint) {
        self.local.published = published;
        self.own_fingerprint = None;
    }

    /// True once a snapshot of the source was applied: the admitted set is complete.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The digest of what admission last judged at `key`, to skip parsing a re-delivery.
    pub fn fingerprint(&self, key: &ObjectKey) -> Option<Fingerprint> {
        if self.local.own_key.as_ref() == Some(key) {
            return self.own_fingerprint;
        }
        self.objects.get(key).and_then(|o| o.fingerprint)
    }

    /// Every admitted Endpoint, oldest cluster first: the whole set, for the engine's first
    /// reconcile (and any full resync).
    pub fn admitted(&self) -> impl Iterator<Item = &Arc<AdmittedEndpoint>> + '_ {
        self.by_seniority
            .values()
            .filter_map(|c| self.clusters.get(c)?.admitted.as_ref())
    }

    pub fn admitted_count(&self) -> usize {
        self.clusters
            .values()
            .filter(|c| c.admitted.is_some())
            .count()
    }

    /// Whether the registry changed since the last call (then write [`Self::registry`]).
    pub fn take_registry_dirty(&mut self) -> bool {
        std::mem::take(&mut self.registry_dirty)
    }

    /// Whether the conflict report changed since the last call.
    pub fn take_report_dirty(&mut self) -> bool {
        std::mem::take(&mut self.report_dirty)
    }

    /// The registry to persist.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::empty(&self.local.cluster_id);
        registry.next_seniority = self.next_seniority;
        registry.clusters = self
            .by_seniority
            .values()
            .filter_map(|c| self.clusters.get(c).map(|e| (c, e)))
            .map(|(c, e)| RegisteredCluster {
                cluster_id: c.clone(),
                object_key: e.holder.0.clone(),
                seniority: e.seniority,
                public_key: e.claims.public_key.to_base64(),
                subnets: e.claims.subnets.clone(),
                gateway_ips: e.claims.gateway_ips.clone(),
                admitted_at: e.admitted_at,
            })
            .collect();
        registry
    }

    /// The current refusals and holdings, for operators.
    pub fn report(&self) -> ConflictReport {
        let mut refused: Vec<RefusedObject> = self
            .objects
            .iter()
            .filter_map(|(key, o)| {
                let (r, since) = o.refusal.as_ref()?;
                Some(RefusedObject {
                    key: key.0.clone(),
                    cluster: r.cluster.clone(),
                    reason: r.reason.as_str().to_owned(),
                    message: r.message.clone(),
                    waiting: self.waiting.contains(key),
                    conflicts_with: r.conflicts_with.clone(),
                    holds: o.holds.clone(),
                    since: unix_secs(*since),
                })
            })
            .collect();
        refused.sort_by(|a, b| a.key.cmp(&b.key));
        let clusters = self
            .by_seniority
            .values()
            .filter_map(|c| self.clusters.get(c).map(|e| (c, e)))
            .map(|(c, e)| ClusterHolding {
                cluster_id: c.clone(),
                key: e.holder.0.clone(),
                seniority: e.seniority,
                admitted: e.admitted.is_some(),
                admitted_at: e.admitted_at,
            })
            .collect();
        ConflictReport { refused, clusters }
    }

    /// Sorts `batch`: objects delivered again unchanged need no parsing.
    pub fn sort(&self, batch: Batch) -> ToParse {
        let mut items = Vec::with_capacity(batch.objects.len());
        let mut slots = Vec::new();
        let mut objects = Vec::new();
        for (key, change) in batch.objects {
            let item = match change {
                Change::Apply(raw) => {
                    let fingerprint = Fingerprint::of(&raw);
                    if self.fingerprint(&key) != Some(fingerprint) {
                        slots.push((
                            items.len(),
                            fingerprint,
                            raw.created,
                            raw.bound_cluster.clone(),
                        ));
                        objects.push(raw);
                    }
                    // Replaced by `complete` for the objects to parse.
                    Item::Unchanged
                }
                Change::Delete => Item::Gone,
                Change::Refused(problem) => Item::SourceRefused(problem),
            };
            items.push((key, item));
        }
        ToParse {
            prepared: Prepared {
                snapshot: batch.snapshot,
                items,
                health: batch.health,
            },
            slots,
            objects,
        }
    }

    /// [`Self::sort`] and parse on the calling thread (tests, benchmarks, small callers; the
    /// runner parses on the blocking pool instead).
    pub fn prepare_inline(&self, batch: Batch) -> Prepared {
        let sorted = self.sort(batch);
        let results = sorted
            .objects()
            .iter()
            .map(|raw| self.parser.parse(raw))
            .collect();
        sorted.complete(results)
    }

    /// Applies one batch.
    pub fn apply(&mut self, batch: Prepared, now: SystemTime) -> AdmissionUpdate {
        let mut ch = Changes::default();
        let suppressed = self.warn.summary(now);
        let health = match batch.health {
            Some(h) if h != self.health => {
                self.health = h.clone();
                Some(h)
            }
            _ => None,
        };

        let mut gone: Vec<ObjectKey> = Vec::new();
        let mut refused_by_source: Vec<(ObjectKey, SourceProblem)> = Vec::new();
        let mut parsed = Vec::new();
        for (key, item) in batch.items {
            match item {
                Item::Unchanged => parsed.push((key, None)),
                Item::Parsed {
                    fingerprint,
                    created,
                    bound,
                    result,
                } => parsed.push((key, Some((fingerprint, created, bound, *result)))),
                Item::Gone => gone.push(key),
                Item::SourceRefused(problem) => refused_by_source.push((key, problem)),
            }
        }
        if batch.snapshot {
            let listed: std::collections::HashSet<&ObjectKey> = parsed
                .iter()
                .map(|(k, _)| k)
                .chain(refused_by_source.iter().map(|(k, _)| k))
                .collect();
            gone.extend(self.objects.keys().filter(|k| !listed.contains(k)).cloned());
            // Clusters remembered from before a restart whose object is no longer there left
            // while the gateway was down.
            let left: Vec<ObjectKey> = self
                .unseen
                .keys()
                .filter(|k| !listed.contains(k))
                .cloned()
                .collect();
            for key in left {
                if let Some(cluster) = self.unseen.remove(&key) {
                    self.release(&cluster, &mut ch);
                }
            }
            if let Some(own) = &self.local.own_key {
                if !listed.contains(own) {
                    self.own_fingerprint = None;
                    ch.republish = true;
                }
            }
            self.synced = true;
        }
        for key in &gone {
            self.remove_object(key, &mut ch);
        }
        for (key, problem) in refused_by_source {
            self.source_refused(key, problem, now, &mut ch);
        }

        // Objects already known (or remembered by the registry) first, then new ones oldest
        // first, so that when the source holds more than `max_objects`, what is dropped never
        // depends on read order and never is a cluster already accepted.
        let (mut known, mut new): (Vec<_>, Vec<_>) = parsed
            .into_iter()
            .filter_map(|(k, p)| p.map(|p| (k, p)))
            .partition(|(k, _)| self.objects.contains_key(k) || self.unseen.contains_key(k));
        new.sort_by(|(ka, a), (kb, b)| order(a.1, ka).cmp(&order(b.1, kb)));
        known.append(&mut new);
        let mut changed = Vec::new();
        for (key, (fingerprint, created, bound, result)) in known {
            if let Some(key) =
                self.take_content(key, fingerprint, created, bound, result, now, &mut ch)
            {
                changed.push(key);
            }
        }
        self.evaluate(changed, now, &mut ch);
        self.finish(ch, batch.snapshot, suppressed, health)
    }

    /// Forgets what the registry remembers of `cluster_id` (`wgcable admission forget`): the
    /// cluster is no longer admitted, its subnets and key are free, and every waiting object
    /// and the cluster's own object are judged again as newcomers, oldest first.
    pub fn forget(&mut self, cluster_id: &str, now: SystemTime) -> AdmissionUpdate {
        let mut ch = Changes::default();
        let mut changed = Vec::new();
        if let Some(entry) = self.clusters.get(cluster_id) {
            let holder = entry.holder.clone();
            self.unseen.remove(&holder);
            self.release(cluster_id, &mut ch);
            if self
                .objects
                .get(&holder)
                .is_some_and(|o| o.candidate.is_some())
            {
                changed.push(holder);
            }
        }
        self.evaluate(changed, now, &mut ch);
        self.finish(ch, false, None, None)
    }

    /// Warnings suppressed in an interval that ended, for a caller with nothing else to do.
    pub fn tick(&mut self, now: SystemTime) -> Option<Suppressed> {
        self.warn.summary(now)
    }

    fn finish(
        &mut self,
        ch: Changes,
        snapshot: bool,
        suppressed: Option<Suppressed>,
        health: Option<SourceHealth>,
    ) -> AdmissionUpdate {
        let mut upserted: Vec<_> = ch.upserted.into_values().collect();
        upserted.sort_by_key(|a| a.seniority);
        if self.registry_dirty {
            // Holdings changed (a cluster came, left or changed its claims).
            self.report_dirty = true;
        }
        AdmissionUpdate {
            snapshot,
            upserted,
            removed: ch.removed.into_iter().collect(),
            refused: ch.refused,
            warnings: ch.warnings,
            suppressed,
            republish: ch.republish,
            health,
        }
    }

    /// Records new content for `key`; returns the key when it is a candidate to judge.
    #[allow(clippy::too_many_arguments)]
    fn take_content(
        &mut self,
        key: ObjectKey,
        fingerprint: Fingerprint,
        created: Option<u64>,
        bound: Option<String>,
        result: Result<Candidate, Refusal>,
        now: SystemTime,
        ch: &mut Changes,
    ) -> Option<ObjectKey> {
        if self.local.own_key.as_ref() == Some(&key) {
            let ours = result
                .as_ref()
                .is_ok_and(|c| c.endpoint.spec == self.local.published.spec);
            if !ours {
                ch.republish = true;
            }
            self.own_fingerprint = Some(fingerprint);
            // Not tracked as an object: it is never admitted, and its removal is seen from
            // the source's next event about it.
            return None;
        }
        if !self.objects.contains_key(&key) && self.objects.len() >= self.config.max_objects {
            let refusal = Refusal::new(
                &key,
                Reason::TooManyObjects,
                format!(
                    "{key}: refused: the source holds more than {} objects (max_objects); it is \
                     considered again when it changes",
                    self.config.max_objects
                ),
            );
            self.report_refusal(&refusal, now, ch);
            return None;
        }
        let from_registry = self.unseen.remove(&key);
        let entry = self.objects.entry(key.clone()).or_insert(ObjectEntry {
            fingerprint: None,
            created,
            candidate: None,
            holds: from_registry,
            refusal: None,
        });
        entry.fingerprint = Some(fingerprint);
        entry.created = created;
        let holds = entry.holds.clone();
        let judged = result.and_then(|c| self.identity(&key, bound.as_deref(), c));
        match judged {
            Err(mut refusal) => {
                if let Some(cluster) = &holds {
                    let admitted = self
                        .clusters
                        .get(cluster)
                        .is_some_and(|c| c.admitted.is_some());
                    refusal.message.push_str(&if admitted {
                        format!("; cluster {cluster} keeps its last accepted Endpoint")
                    } else {
                        format!("; cluster {cluster} keeps its subnets and key reserved")
                    });
                }
                self.set_candidate(&key, None);
                self.refuse(&key, refusal, true, now, ch);
                None
            }
            Ok(candidate) => {
                if let Some(held) = holds.filter(|h| *h != candidate.spec.cluster_id) {
                    // Only from a source without bound clusters: the object now describes
                    // another cluster, so the one it held leaves.
                    self.release(&held, ch);
                }
                self.set_candidate(&key, Some(Arc::new(candidate)));
                Some(key)
            }
        }
    }

    /// The per-object identity rules (everything that needs no other object).
    fn identity(
        &self,
        key: &ObjectKey,
        bound: Option<&str>,
        candidate: Candidate,
    ) -> Result<Candidate, Refusal> {
        let cluster = candidate.spec.cluster_id.as_str();
        let refuse =
            |reason, message: String| Err(Refusal::new(key, reason, message).for_cluster(cluster));
        if let Some(bound) = bound.filter(|b| *b != cluster) {
            // The source vouches for its bound cluster ids, but name one only if it is a
            // cluster id (a source bug must not turn into a log line full of input).
            let bound = if crate::util::is_cluster_id(bound) {
                format!("cluster {bound}")
            } else {
                "another cluster".to_owned()
            };
            return refuse(
                Reason::Impostor,
                format!(
                    "{key}: refused as an impostor: it claims cluster {cluster}, but its location \
                     binds it to {bound}"
                ),
            );
        }
        if cluster == self.local.cluster_id {
            let own = match &self.local.own_key {
                Some(own) => format!(" (at {own})"),
                None => String::new(),
            };
            return refuse(
                Reason::LocalCluster,
                format!(
                    "{key}: refused: it claims the local cluster {cluster}; only this gateway \
                     publishes that cluster's Endpoint{own}"
                ),
            );
        }
        if !candidate.spec.backend.is_empty() && candidate.spec.backend != BACKEND_WIREGUARD {
            return refuse(
                Reason::UnsupportedBackend,
                format!(
                    "{key}: refused: cluster {cluster} uses a cable driver other than \
                     {BACKEND_WIREGUARD}"
                ),
            );
        }
        match candidate.spec.public_key {
            None => refuse(
                Reason::PublicKeyMissing,
                format!(
                    "{key}: refused: cluster {cluster} publishes no WireGuard public key \
                     (spec.backend_config.publicKey)"
                ),
            ),
            Some(k) if k == self.local.public_key => refuse(
                Reason::OwnPublicKey,
                format!(
                    "{key}: refused: cluster {cluster} publishes this gateway's own public key"
                ),
            ),
            Some(_) => Ok(candidate),
        }
    }

    fn set_candidate(&mut self, key: &ObjectKey, candidate: Option<Arc<Candidate>>) {
        if let Some(o) = self.objects.get_mut(key) {
            o.candidate = candidate;
        }
    }

    /// Judges the changed candidates, then (if anything was freed) every waiting one: clusters
    /// already held first, oldest first, then newcomers in the source's creation order, then
    /// by cluster id. Neither file names nor read order decide who holds what.
    fn evaluate(&mut self, changed: Vec<ObjectKey>, now: SystemTime, ch: &mut Changes) {
        let fresh: BTreeSet<ObjectKey> = changed.into_iter().collect();
        let mut freed = ch.released;
        let mut holders: BTreeSet<(u64, ObjectKey)> = fresh
            .iter()
            .filter_map(|k| Some((self.held_seniority(k)?, k.clone())))
            .collect();
        // A holder whose new content waits for a conflict with a younger cluster may be
        // unblocked by that cluster's own update in the same batch: repeat while anything is
        // freed (each round admits at least the holder that freed something, so it ends).
        loop {
            if ch.released {
                holders.extend(
                    self.waiting
                        .iter()
                        .filter_map(|k| Some((self.held_seniority(k)?, k.clone()))),
                );
            }
            ch.released = false;
            if holders.is_empty() {
                break;
            }
            for (_, key) in std::mem::take(&mut holders) {
                self.judge(&key, fresh.contains(&key), now, ch);
            }
            freed |= ch.released;
            if !ch.released {
                break;
            }
        }
        let mut newcomers: Vec<ObjectKey> = fresh
            .iter()
            .filter(|k| self.held_seniority(k).is_none())
            .cloned()
            .collect();
        if freed {
            newcomers.extend(
                self.waiting
                    .iter()
                    .filter(|k| self.held_seniority(k).is_none())
                    .cloned(),
            );
        }
        let mut ordered: Vec<_> = newcomers
            .into_iter()
            .filter_map(|k| {
                let o = self.objects.get(&k)?;
                let cluster = o.candidate.as_ref()?.spec.cluster_id.clone();
                Some(((o.created.is_none(), o.created, cluster), k))
            })
            .collect();
        ordered.sort();
        ordered.dedup();
        for (_, key) in ordered {
            self.judge(&key, fresh.contains(&key), now, ch);
        }
    }

    /// The seniority of the cluster `key` holds, when its candidate is for that cluster.
    fn held_seniority(&self, key: &ObjectKey) -> Option<u64> {
        let o = self.objects.get(key)?;
        let held = o.holds.as_ref()?;
        if o.candidate.as_ref()?.spec.cluster_id != *held {
            return None;
        }
        Some(self.clusters.get(held)?.seniority)
    }

    /// Judges one candidate against what the other clusters hold, and admits it if nothing
    /// conflicts.
    fn judge(&mut self, key: &ObjectKey, fresh: bool, now: SystemTime, ch: &mut Changes) {
        let Some(candidate) = self.objects.get(key).and_then(|o| o.candidate.clone()) else {
            return;
        };
        let cluster = candidate.spec.cluster_id.clone();
        let Some(claims) = Claims::of(&candidate) else {
            return; // Refused by `identity` already.
        };
        if let Some(entry) = self.clusters.get(&cluster) {
            if entry.holder != *key {
                let holder = entry.holder.clone();
                let refusal = Refusal::new(
                    key,
                    Reason::DuplicateCluster,
                    format!(
                        "{key}: refused: cluster {cluster} is already held by {holder}; the \
                         accepted object stays, and this one is admitted if {holder} goes away"
                    ),
                )
                .for_cluster(&cluster)
                .against(&cluster);
                self.refuse(key, refusal, fresh, now, ch);
                return;
            }
        }
        if let Some(refusal) = self.conflict(key, &cluster, &claims) {
            self.refuse(key, refusal, fresh, now, ch);
            return;
        }

        let seniority = match self.clusters.get(&cluster) {
            Some(entry) => entry.seniority,
            None => {
                let s = self.next_seniority;
                self.next_seniority += 1;
                s
            }
        };
        let admitted = Arc::new(AdmittedEndpoint {
            cluster_id: cluster.clone(),
            key: key.clone(),
            endpoint: candidate.endpoint.clone(),
            spec: candidate.spec.clone(),
            seniority,
        });
        let old = self.clusters.remove(&cluster);
        let (changed_spec, admitted_at) = match &old {
            Some(old) => {
                if old.claims != claims {
                    self.remove_claims(&cluster, &old.claims);
                    self.insert_claims(&cluster, &claims);
                    self.registry_dirty = true;
                    ch.released = true;
                }
                let changed = old
                    .admitted
                    .as_ref()
                    .is_none_or(|a| a.endpoint.spec != candidate.endpoint.spec);
                (changed, old.admitted_at)
            }
            None => {
                self.insert_claims(&cluster, &claims);
                self.by_seniority.insert(seniority, cluster.clone());
                self.registry_dirty = true;
                (true, unix_secs(now))
            }
        };
        self.clusters.insert(
            cluster.clone(),
            ClusterEntry {
                holder: key.clone(),
                seniority,
                claims,
                admitted: Some(admitted.clone()),
                admitted_at,
            },
        );
        if let Some(o) = self.objects.get_mut(key) {
            o.holds = Some(cluster.clone());
            if o.refusal.take().is_some() {
                self.report_dirty = true;
            }
        }
        if self.waiting.remove(key) {
            self.report_dirty = true;
        }
        if changed_spec {
            ch.removed.remove(&cluster);
            ch.upserted.insert(cluster, admitted);
        }
    }

    /// The first conflict of `claims` with what another cluster holds.
    fn conflict(&self, key: &ObjectKey, cluster: &str, claims: &Claims) -> Option<Refusal> {
        let refusal = |reason, other: &str, what: String| {
            Some(
                Refusal::new(
                    key,
                    reason,
                    format!(
                        "{key}: refused for now: {what}; the cluster that holds it keeps it, and \
                         {cluster} is admitted once the conflict is gone"
                    ),
                )
                .for_cluster(cluster)
                .against(other),
            )
        };
        if let Some(other) = self.keys.holder(&claims.public_key, cluster) {
            return refusal(
                Reason::DuplicateKey,
                other,
                format!("cluster {cluster} publishes the public key of cluster {other}"),
            );
        }
        for net in &claims.subnets {
            if let Some(other) = self.subnets.overlapping(net, cluster) {
                return refusal(
                    Reason::SubnetConflict,
                    other,
                    format!(
                        "subnet {net} of cluster {cluster} overlaps subnets held by cluster \
                         {other}"
                    ),
                );
            }
            if let Some((ip, other)) = self.gateways.inside(net, cluster) {
                return refusal(
                    Reason::GatewayConflict,
                    other,
                    format!(
                        "subnet {net} of cluster {cluster} covers {ip}, the gateway address of \
                         cluster {other}"
                    ),
                );
            }
        }
        for ip in &claims.gateway_ips {
            if let Some(other) = self.subnets.owner_of(*ip, cluster) {
                return refusal(
                    Reason::GatewayConflict,
                    other,
                    format!(
                        "the gateway address {ip} of cluster {cluster} lies in subnets held by \
                         cluster {other}"
                    ),
                );
            }
        }
        None
    }

    /// Like [`Self::conflict`], for registry entries at start: the other cluster's name.
    fn conflict_with(&self, cluster: &str, claims: &Claims) -> Option<String> {
        self.conflict(&ObjectKey(String::new()), cluster, claims)
            .and_then(|r| r.conflicts_with)
    }

    fn insert_claims(&mut self, cluster: &str, claims: &Claims) {
        self.subnets.insert(cluster, &claims.subnets);
        self.keys.insert(cluster, claims.public_key);
        self.gateways.insert(cluster, &claims.gateway_ips);
    }

    fn remove_claims(&mut self, cluster: &str, claims: &Claims) {
        self.subnets.remove(cluster, &claims.subnets);
        self.keys.remove(cluster, &claims.public_key);
        self.gateways.remove(cluster, &claims.gateway_ips);
    }

    /// The cluster leaves: its claims are free and the registry forgets it.
    fn release(&mut self, cluster: &str, ch: &mut Changes) {
        let Some(entry) = self.clusters.remove(cluster) else {
            return;
        };
        self.remove_claims(cluster, &entry.claims);
        self.by_seniority.remove(&entry.seniority);
        if let Some(o) = self.objects.get_mut(&entry.holder) {
            o.holds = None;
        }
        ch.upserted.remove(cluster);
        if entry.admitted.is_some() {
            ch.removed.insert(cluster.to_owned());
        }
        ch.released = true;
        self.registry_dirty = true;
        self.report_dirty = true;
    }

    fn remove_object(&mut self, key: &ObjectKey, ch: &mut Changes) {
        if self.local.own_key.as_ref() == Some(key) {
            self.own_fingerprint = None;
            ch.republish = true;
            return;
        }
        self.warn.forget(key);
        if self.waiting.remove(key) {
            self.report_dirty = true;
        }
        if let Some(entry) = self.objects.remove(key) {
            if entry.refusal.is_some() {
                self.report_dirty = true;
            }
            if let Some(cluster) = entry.holds {
                self.release(&cluster, ch);
            }
        }
    }

    fn source_refused(
        &mut self,
        key: ObjectKey,
        problem: SourceProblem,
        now: SystemTime,
        ch: &mut Changes,
    ) {
        if self.local.own_key.as_ref() == Some(&key) {
            // Our own file was replaced by something unreadable: write it again (an atomic
            // rename replaces a link or FIFO itself, never what it points at).
            self.own_fingerprint = None;
            ch.republish = true;
            return;
        }
        let refusal = Refusal::new(&key, Reason::Source(problem.reason), problem.message);
        if self.objects.get(&key).is_some_and(|o| {
            o.fingerprint.is_none()
                && o.refusal
                    .as_ref()
                    .is_some_and(|(r, _)| r.reason == refusal.reason)
        }) {
            return; // Refused for the same reason already.
        }
        if !self.objects.contains_key(&key) && self.objects.len() >= self.config.max_objects {
            self.report_refusal(&refusal, now, ch);
            return;
        }
        // What it held leaves: a file that turned into a link is no longer that cluster's.
        if let Some(cluster) = self.objects.get(&key).and_then(|o| o.holds.clone()) {
            self.release(&cluster, ch);
        }
        if let Some(cluster) = self.unseen.remove(&key) {
            self.release(&cluster, ch);
        }
        let entry = self.objects.entry(key.clone()).or_insert(ObjectEntry {
            fingerprint: None,
            created: None,
            candidate: None,
            holds: None,
            refusal: None,
        });
        entry.fingerprint = None;
        entry.candidate = None;
        self.waiting.remove(&key);
        self.refuse(&key, refusal, true, now, ch);
    }

    /// Records a refusal; reports it when it is news (new content, or a new reason or
    /// message).
    fn refuse(
        &mut self,
        key: &ObjectKey,
        refusal: Refusal,
        new_content: bool,
        now: SystemTime,
        ch: &mut Changes,
    ) {
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        let news = new_content
            || o.refusal.as_ref().is_none_or(|(old, _)| {
                old.reason != refusal.reason || old.message != refusal.message
            });
        let since = match &o.refusal {
            Some((old, since)) if old.reason == refusal.reason && !new_content => *since,
            _ => now,
        };
        let waiting = refusal.is_waiting() && o.candidate.is_some();
        o.refusal = Some((refusal.clone(), since));
        if waiting {
            self.waiting.insert(key.clone());
        } else {
            self.waiting.remove(key);
        }
        if news {
            self.report_dirty = true;
            self.report_refusal(&refusal, now, ch);
        }
    }

    fn report_refusal(&mut self, refusal: &Refusal, now: SystemTime, ch: &mut Changes) {
        if self.warn.allow(&refusal.key, refusal.reason, now) {
            ch.warnings.push(refusal.clone());
        }
        ch.refused.push(refusal.clone());
    }
}

/// Newcomers' order: the source's creation order (unknown last), then the key.
fn order(created: Option<u64>, key: &ObjectKey) -> (bool, Option<u64>, &ObjectKey) {
    (created.is_none(), created, key)
}

#[cfg(test)]
impl Admission {
    /// The invariants the rules promise, checked from scratch (for randomized tests):
    /// admitted clusters share no key, subnet or gateway address; every index entry matches a
    /// holding; every waiting object really conflicts with something held; nothing refused
    /// for a conflict could be admitted now.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let held: Vec<(&String, &ClusterEntry)> = self.clusters.iter().collect();
        for (i, (ca, ea)) in held.iter().enumerate() {
            for (cb, eb) in &held[i + 1..] {
                if ea.claims.public_key == eb.claims.public_key {
                    return Err(format!("{ca} and {cb} share a key"));
                }
                for na in &ea.claims.subnets {
                    if eb.claims.subnets.iter().any(|nb| overlaps(na, nb)) {
                        return Err(format!("{ca} and {cb} share subnet {na}"));
                    }
                    if let Some(ip) = eb.claims.gateway_ips.iter().find(|ip| na.contains(*ip)) {
                        return Err(format!("{ca}'s {na} covers {cb}'s gateway {ip}"));
                    }
                }
                for nb in &eb.claims.subnets {
                    if let Some(ip) = ea.claims.gateway_ips.iter().find(|ip| nb.contains(*ip)) {
                        return Err(format!("{cb}'s {nb} covers {ca}'s gateway {ip}"));
                    }
                }
            }
            if self.by_seniority.get(&ea.seniority) != Some(*ca) {
                return Err(format!("{ca} missing from by_seniority"));
            }
            match (&ea.admitted, self.objects.get(&ea.holder)) {
                (Some(a), Some(o)) => {
                    if o.holds.as_deref() != Some(ca.as_str()) {
                        return Err(format!("{} does not know it holds {ca}", ea.holder));
                    }
                    if o.refusal.is_none()
                        && o.candidate.as_ref().map(|c| &c.endpoint) != Some(&a.endpoint)
                    {
                        return Err(format!("{ca}: admitted content is not its object's"));
                    }
                }
                (Some(_), None) => return Err(format!("{ca} admitted without its object")),
                (None, _) => {}
            }
        }
        if self.by_seniority.len() != self.clusters.len() {
            return Err("by_seniority has stale entries".into());
        }
        for key in &self.waiting {
            let o = self
                .objects
                .get(key)
                .ok_or(format!("waiting {key} is gone"))?;
            let c = o
                .candidate
                .as_ref()
                .ok_or(format!("waiting {key} has no content"))?;
            let cluster = &c.spec.cluster_id;
            let claims = Claims::of(c).ok_or("no key")?;
            let duplicate = self.clusters.get(cluster).is_some_and(|e| e.holder != *key);
            if !duplicate && self.conflict(key, cluster, &claims).is_none() {
                return Err(format!("{key} waits but nothing conflicts with it"));
            }
        }
        for (key, o) in &self.objects {
            let waiting = o
                .refusal
                .as_ref()
                .is_some_and(|(r, _)| r.reason.is_conflict());
            if waiting && o.candidate.is_some() && !self.waiting.contains(key) {
                return Err(format!("{key} is refused for a conflict but not waiting"));
            }
        }
        Ok(())
    }
}
