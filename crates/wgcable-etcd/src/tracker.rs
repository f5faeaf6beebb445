//! The pure core of the watch: what has been delivered, up to which revision, and what a
//! listing or a watch event turns into. No I/O and no clock; the async layer
//! ([`crate::watch`]) feeds it what etcd sent.

use std::collections::{BTreeMap, BTreeSet};

use wgcable_broker::{Format, ObjectKey, RawObject, SourceEvent, SourceProblem};

use crate::layout::{refused_key, show_key, Layout};

/// The reason code of a key outside the layout (a metrics label).
pub(crate) const REFUSED_LAYOUT: &str = "key_layout";

/// A key and value as etcd returned them (the value already cut to the value limit + 1).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

// By hand: the value is untrusted input and must never reach a log.
impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("key", &show_key(&self.key))
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// One change a watch reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put(Kv),
    Delete { key: Vec<u8>, revision: i64 },
}

/// The source's own bounds (the admission layer applies its finer ones afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_value_bytes: usize,
    pub max_objects: usize,
    pub max_total_bytes: usize,
}

/// The prefix holds more than the source is willing to hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub(crate) struct OverLimit {
    pub what: String,
}

/// What the tracker remembers of a delivered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    mod_revision: i64,
    size: usize,
}

/// Cuts a value to `max + 1` bytes (and gives the rest of the memory back): enough for the
/// admission layer to see it is oversized, never more.
pub(crate) fn cut(mut value: Vec<u8>, max: usize) -> Vec<u8> {
    if value.len() > max {
        value.truncate(max + 1);
        value.shrink_to_fit();
    }
    value
}

/// Stands in for a value too large to even be received (larger than the gRPC message limit):
/// `max + 1` zero bytes, which admission refuses as oversized before looking at them.
pub(crate) fn unreadable_value(max: usize) -> Vec<u8> {
    vec![0; max + 1]
}

/// The state rebuilt from the stream of listings and watch events (a reflector, in kube-rs's
/// words), holding only keys, revisions and sizes; values pass through.
#[derive(Debug)]
pub(crate) struct Tracker {
    layout: Layout,
    limits: Limits,
    /// Every change up to and including this revision has been delivered; 0 before the first
    /// listing.
    revision: i64,
    live: BTreeMap<String, Held>,
    total: usize,
    /// Keys seen that do not match the layout, counted each time one is seen.
    ignored: u64,
    /// The keys outside the layout that etcd holds now, as refused (printable), each
    /// reported once.
    refused: BTreeSet<String>,
}

impl Tracker {
    pub fn new(layout: Layout, limits: Limits) -> Tracker {
        Tracker {
            layout,
            limits,
            revision: 0,
            live: BTreeMap::new(),
            total: 0,
            ignored: 0,
            refused: BTreeSet::new(),
        }
    }

    /// The revision to resume watching after (0: a listing is needed first).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Forgets the revision, so the next step is a full listing (after a compaction, or after
    /// the watch delivered something the tracker could not hold).
    pub fn lost_track(&mut self) {
        self.revision = 0;
    }

    /// How many keys outside the layout were seen so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// How many keys are delivered and live.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// A full listing at `revision` becomes a snapshot, followed by a refusal for every key
    /// outside the layout (a snapshot stands for everything the source holds, refusals
    /// included). On success the tracker holds exactly what it lists; over the limits,
    /// nothing changes (what was delivered stays).
    pub fn snapshot(&mut self, kvs: Vec<Kv>, revision: i64) -> Result<Vec<SourceEvent>, OverLimit> {
        let mut live = BTreeMap::new();
        let mut total = 0usize;
        let mut objects = Vec::new();
        let mut refused = BTreeSet::new();
        for kv in kvs {
            let raw = match self.raw(kv) {
                Ok(raw) => raw,
                Err(key) => {
                    refused.insert(key);
                    continue;
                }
            };
            total += raw.bytes.len();
            live.insert(
                raw.key.0.clone(),
                Held {
                    mod_revision: version_of(&raw),
                    size: raw.bytes.len(),
                },
            );
            objects.push(raw);
            self.check(live.len(), total)?;
        }
        self.live = live;
        self.total = total;
        self.revision = revision;
        let mut events = vec![SourceEvent::Snapshot(objects)];
        events.extend(refused.iter().cloned().map(refusal));
        self.refused = refused;
        Ok(events)
    }

    /// One watch event. `None` when there is nothing to tell: a replay of something already
    /// delivered (a resumed watch may repeat the revision it was cut in), the deletion of a key
    /// never delivered, a key outside the layout already refused.
    pub fn change(&mut self, change: Change) -> Result<Option<SourceEvent>, OverLimit> {
        match change {
            Change::Put(kv) => {
                let revision = kv.mod_revision;
                self.seen(revision);
                let raw = match self.raw(kv) {
                    Ok(raw) => raw,
                    Err(key) if self.refused.insert(key.clone()) => return Ok(Some(refusal(key))),
                    Err(_) => return Ok(None),
                };
                let old = self.live.get(&raw.key.0).copied();
                if old.is_some_and(|h| h.mod_revision >= revision) {
                    return Ok(None);
                }
                let old_size = old.map_or(0, |h| h.size);
                let count = self.live.len() + usize::from(old.is_none());
                let total = self.total - old_size + raw.bytes.len();
                self.check(count, total)?;
                self.total = total;
                self.live.insert(
                    raw.key.0.clone(),
                    Held {
                        mod_revision: revision,
                        size: raw.bytes.len(),
                    },
                );
                Ok(Some(SourceEvent::Apply(raw)))
            }
            Change::Delete { key, revision } => {
                self.seen(revision);
                if self.layout.cluster_of(&key).is_none() {
                    // A refused key that goes: its refusal goes too.
                    let shown = refused_key(&key);
                    return Ok(self
                        .refused
                        .remove(&shown)
                        .then_some(SourceEvent::Delete(ObjectKey(shown))));
                }
                // A key never delivered (or already gone) is not news.
                let Ok(key) = String::from_utf8(key) else {
                    return Ok(None);
                };
                match self.live.get(&key) {
                    Some(h) if h.mod_revision < revision => {
                        self.total -= h.size;
                        self.live.remove(&key);
                        Ok(Some(SourceEvent::Delete(ObjectKey(key))))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// A watch response ended at a revision boundary (not in the middle of a fragmented
    /// revision), or a progress notification said everything up to `revision` was sent.
    pub fn complete(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// An event of `revision` arrived: every earlier revision is complete (the watch delivers
    /// revisions in order).
    fn seen(&mut self, revision: i64) {
        self.revision = self.revision.max(revision - 1);
    }

    fn check(&self, count: usize, total: usize) -> Result<(), OverLimit> {
        let l = &self.limits;
        if count > l.max_objects {
            return Err(OverLimit {
                what: format!(
                    "{} holds more than {} keys; nothing more is taken from etcd until keys are removed there (what is known stays in place)",
                    self.layout.range_start(),
                    l.max_objects
                ),
            });
        }
        if total > l.max_total_bytes {
            return Err(OverLimit {
                what: format!(
                    "the values under {} add up to more than {} bytes; nothing more is taken from etcd until some are removed (what is known stays in place)",
                    self.layout.range_start(),
                    l.max_total_bytes
                ),
            });
        }
        Ok(())
    }

    /// A key of the layout becomes a raw object; any other key is counted and returned as
    /// the printable key it is refused under.
    fn raw(&mut self, kv: Kv) -> Result<RawObject, String> {
        let Some(cluster) = self.layout.cluster_of(&kv.key) else {
            self.ignored += 1;
            return Err(refused_key(&kv.key));
        };
        let key = String::from_utf8(kv.key).expect("cluster_of accepts only UTF-8 keys");
        let bytes = cut(kv.value, self.limits.max_value_bytes);
        Ok(RawObject {
            key: ObjectKey(key),
            bound_cluster: Some(cluster),
            format: sniff(&bytes),
            bytes,
            created: u64::try_from(kv.create_revision).ok(),
            version: Some(kv.mod_revision.to_string()),
        })
    }
}

fn refusal(key: String) -> SourceEvent {
    SourceEvent::Refused {
        key: ObjectKey(key),
        problem: SourceProblem {
            reason: REFUSED_LAYOUT,
            message: "the key does not match the layout <prefix>/endpoints/<cluster-id> (the cluster id a DNS label); it is ignored".into(),
        },
    }
}

fn version_of(raw: &RawObject) -> i64 {
    raw.version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// JSON when the value starts (after whitespace) with `{`, YAML otherwise: the file broker's
/// two schemas, told apart without parsing (admission parses).
pub(crate) fn sniff(bytes: &[u8]) -> Format {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Json,
        _ => Format::Yaml,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_value_bytes: 16,
        max_objects: 3,
        max_total_bytes: 40,
    };

    fn tracker() -> Tracker {
        Tracker::new(Layout::new("/w").expect("valid"), LIMITS)
    }

    fn kv(key: &str, value: &[u8], create: i64, rev: i64) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: rev,
        }
    }

    fn put(key: &str, value: &[u8], rev: i64) -> Change {
        Change::Put(kv(key, value, rev, rev))
    }

    fn del(key: &str, rev: i64) -> Change {
        Change::Delete {
            key: key.as_bytes().to_vec(),
            revision: rev,
        }
    }

    fn applied(ev: Option<SourceEvent>) -> RawObject {
        match ev {
            Some(SourceEvent::Apply(raw)) => raw,
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn a_listing_becomes_a_snapshot_of_the_layout_keys_only() {
        let mut t = tracker();
        let evs = t
            .snapshot(
                vec![
                    kv("/w/endpoints/a", b"spec: {}", 5, 7),
                    kv("/w/endpoints/B", b"x", 6, 6),
                    kv("/w/endpoints/b/extra", b"x", 6, 6),
                    kv("/w/endpoints/c", b" {\"spec\": {}}", 3, 3),
                ],
                9,
            )
            .expect("within limits");
        let [SourceEvent::Snapshot(objects), refusals @ ..] = evs.as_slice() else {
            panic!("not a snapshot first: {evs:?}")
        };
        let refused: Vec<&str> = refusals
            .iter()
            .map(|e| match e {
                SourceEvent::Refused { key, problem } => {
                    assert_eq!(problem.reason, REFUSED_LAYOUT);
                    key.0.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(refused, ["/w/endpoints/B", "/w/endpoints/b/extra"]);
        let keys: Vec<_> = objects.iter().map(|o| o.key.0.as_str()).collect();
        assert_eq!(keys, ["/w/endpoints/a", "/w/endpoints/c"]);
        assert_eq!(objects[0].bound_cluster.as_deref(), Some("a"));
        assert_eq!(objects[0].created, Some(5));
        assert_eq!(objects[0].version.as_deref(), Some("7"));
        assert_eq!(objects[0].format, Format::Yaml);
        assert_eq!(objects[1].format, Format::Json);
        assert_eq!(t.revision(), 9);
        assert_eq!(t.ignored(), 2);
        // A refused key is reported once, and its deletion takes the refusal away.
        assert_eq!(t.change(put("/w/endpoints/B", b"y", 10)).expect("ok"), None);
        assert!(matches!(
            t.change(put("/w/endpoints/D_", b"y", 11)).expect("ok"),
            Some(SourceEvent::Refused { .. })
        ));
        assert_eq!(
            t.change(del("/w/endpoints/B", 12)).expect("ok"),
            Some(SourceEvent::Delete(ObjectKey("/w/endpoints/B".into())))
        );
        assert_eq!(t.change(del("/w/endpoints/B", 13)).expect("ok"), None);
        assert_eq!(t.ignored(), 4, "counted at each sighting");
        // A new listing reports every refused key it holds again.
        let evs = t
            .snapshot(vec![kv("/w/endpoints/D_", b"y", 11, 11)], 14)
            .expect("ok");
        assert_eq!(evs.len(), 2, "{evs:?}");
    }

    #[test]
    fn values_are_cut_to_the_limit_plus_one() {
        let mut t = tracker();
        let raw = applied(
            t.change(put("/w/endpoints/a", &[b'x'; 1000], 2))
                .expect("ok"),
        );
        assert_eq!(raw.bytes.len(), LIMITS.max_value_bytes + 1);
        assert!(raw.bytes.capacity() <= LIMITS.max_value_bytes + 1);
        let raw = applied(t.change(put("/w/endpoints/b", &[b'y'; 16], 3)).expect("ok"));
        assert_eq!(raw.bytes.len(), 16, "a value at the limit is whole");
        assert_eq!(unreadable_value(16).len(), 17);
    }

    #[test]
    fn watch_events_in_order_replays_skipped() {
        let mut t = tracker();
        t.snapshot(vec![kv("/w/endpoints/a", b"1", 2, 2)], 4)
            .expect("ok");
        // A resumed watch repeats revision 5 (it was cut inside a fragmented revision).
        let raw = applied(t.change(put("/w/endpoints/b", b"1", 5)).expect("ok"));
        assert_eq!(raw.key.0, "/w/endpoints/b");
        assert_eq!(t.revision(), 4, "revision 5 may not be complete yet");
        assert_eq!(t.change(put("/w/endpoints/b", b"1", 5)).expect("ok"), None);
        applied(t.change(put("/w/endpoints/a", b"2", 6)).expect("ok"));
        assert_eq!(t.revision(), 5);
        // An older put of a key (a replay) changes nothing.
        assert_eq!(t.change(put("/w/endpoints/a", b"1", 2)).expect("ok"), None);
        assert_eq!(
            t.change(del("/w/endpoints/a", 7)).expect("ok"),
            Some(SourceEvent::Delete(ObjectKey("/w/endpoints/a".into())))
        );
        assert_eq!(t.change(del("/w/endpoints/a", 7)).expect("ok"), None);
        assert_eq!(t.change(del("/w/endpoints/zz", 8)).expect("ok"), None);
        assert_eq!(
            t.change(del("/w/endpoints/NOT", 9)).expect("ok"),
            None,
            "deleting an ignored key is not news"
        );
        t.complete(9);
        assert_eq!(t.revision(), 9);
        t.complete(3);
        assert_eq!(t.revision(), 9, "never goes back");
        assert_eq!(t.len(), 1);
        t.lost_track();
        assert_eq!(t.revision(), 0);
    }

    #[test]
    fn limits_refuse_without_changing_what_is_held() {
        let mut t = tracker();
        let four: Vec<Kv> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| kv(&format!("/w/endpoints/{id}"), b"v", 1, 1))
            .collect();
        let err = t.snapshot(four, 2).expect_err("4 keys > 3");
        assert!(err.what.contains("more than 3 keys"), "{}", err.what);
        assert_eq!((t.revision(), t.len()), (0, 0));

        t.snapshot(vec![kv("/w/endpoints/a", &[1; 16], 1, 1)], 2)
            .expect("ok");
        applied(t.change(put("/w/endpoints/b", &[1; 16], 3)).expect("ok"));
        let err = t
            .change(put("/w/endpoints/c", &[1; 16], 4))
            .expect_err("48 bytes > 40");
        assert!(err.what.contains("more than 40 bytes"), "{}", err.what);
        // Replacing a value counts its new size only.
        applied(t.change(put("/w/endpoints/b", &[1; 8], 5)).expect("ok"));
        applied(t.change(put("/w/endpoints/c", &[1; 16], 6)).expect("ok"));
        assert!(t.change(put("/w/endpoints/d", b"1", 7)).is_err(), "4th key");
        // Oversized values count as what is held: limit + 1.
        let mut t = tracker();
        t.snapshot(vec![kv("/w/endpoints/a", &[0; 1000], 1, 1)], 1)
            .expect("17 bytes held");
        assert_eq!(t.total, 17);
    }

    #[test]
    fn formats_are_sniffed_not_parsed() {
        assert_eq!(sniff(b"  \n{\"a\": 1}"), Format::Json);
        assert_eq!(sniff(b"apiVersion: v1"), Format::Yaml);
        assert_eq!(sniff(b""), Format::Yaml);
        assert_eq!(sniff(b"\xff\xfe"), Format::Yaml);
    }

    #[test]
    fn kv_debug_hides_the_value() {
        let text = format!("{:?}", kv("/w/endpoints/a", b"private-key-bytes", 1, 1));
        assert!(!text.contains("private-key-bytes"), "{text}");
        assert!(text.contains("<17 bytes>"), "{text}");
    }
}
