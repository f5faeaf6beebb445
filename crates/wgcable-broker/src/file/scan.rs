//! One scan of the broker directory: blocking (run it on the blocking pool), bounded, and
//! never reading anything but regular files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::fsutil::{self, ReadOutcome, ReadRefusal, Stamp};
use crate::{Format, ObjectKey, RawObject, SourceEvent, SourceHealth, SourceProblem};

/// Reason codes of the file source's refusals (stable metrics labels).
pub const SYMLINK: &str = "symlink";
pub const NOT_REGULAR_FILE: &str = "not_regular_file";
pub const BAD_NAME: &str = "bad_name";
pub const UNREADABLE: &str = "unreadable";

/// The limits a scan works within.
#[derive(Clone, Debug)]
pub struct ScanLimits {
    pub max_files: usize,
    pub max_file_bytes: usize,
    /// How long a file's content and stamp must stay the same, over two reads, before it is
    /// delivered.
    pub settle: Duration,
}

/// What the scanner remembers of one regular file.
#[derive(Debug)]
struct Tracked {
    /// The last read: stamp after it, digest of its bytes, and when.
    stamp: Stamp,
    hash: [u8; 32],
    read_at: Instant,
    /// The digest of the content last delivered.
    delivered: Option<[u8; 32]>,
    /// When the file was first found missing (it is gone once still missing `settle` later).
    missing_since: Option<Instant>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub events: Vec<SourceEvent>,
    /// Files changed but not yet confirmed: scan again at this time.
    pub recheck_at: Option<Instant>,
}

/// The file source's memory of the directory between scans.
#[derive(Debug)]
pub struct Scanner {
    dir: PathBuf,
    limits: ScanLimits,
    files: BTreeMap<String, Tracked>,
    /// Names refused, with the reason: each is reported once, and deleted when it goes.
    refused: BTreeMap<String, &'static str>,
    health: SourceHealth,
}

/// A name the directory may hold an Endpoint under: `<cluster-id>.yaml|.yml|.json`.
fn endpoint_name(name: &str) -> Option<(&str, Format)> {
    let (stem, format) = if let Some(stem) = name.strip_suffix(".yaml") {
        (stem, Format::Yaml)
    } else if let Some(stem) = name.strip_suffix(".yml") {
        (stem, Format::Yaml)
    } else if let Some(stem) = name.strip_suffix(".json") {
        (stem, Format::Json)
    } else {
        return None;
    };
    Some((stem, format))
}

/// A file name as it may be printed: control characters escaped, at most 80 characters.
fn printable(name: &str) -> String {
    let escaped: String = name.escape_default().collect();
    if escaped.chars().count() > 80 {
        let cut: String = escaped.chars().take(77).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Birth time in nanoseconds since the epoch: files created earlier sort first (`statx`;
/// `None` where the file system does not record it).
fn created(meta: &std::fs::Metadata) -> Option<u64> {
    let t = meta.created().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

impl Scanner {
    pub fn new(dir: PathBuf, limits: ScanLimits) -> Self {
        Scanner {
            dir,
            limits,
            files: BTreeMap::new(),
            refused: BTreeMap::new(),
            health: SourceHealth::Healthy,
        }
    }

    fn set_health(&mut self, health: SourceHealth, events: &mut Vec<SourceEvent>) {
        if health != self.health {
            self.health = health.clone();
            events.push(SourceEvent::Health(health));
        }
    }

    fn refuse(&mut self, name: &str, reason: &'static str, message: String, out: &mut ScanResult) {
        // A delivered file that turned into something else is no longer an object.
        self.files.remove(name);
        if self.refused.get(name) == Some(&reason) {
            return;
        }
        self.refused.insert(name.to_owned(), reason);
        out.events.push(SourceEvent::Refused {
            key: ObjectKey(name.to_owned()),
            problem: SourceProblem { reason, message },
        });
    }

    /// Reads the directory and returns what changed. `full`: re-read every file's content
    /// (otherwise a file whose stamp did not change is taken as unchanged).
    pub fn scan(&mut self, now: Instant, full: bool) -> ScanResult {
        let mut out = ScanResult::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                let health = SourceHealth::Unhealthy(format!(
                    "cannot read the broker directory {}: {e}",
                    self.dir.display()
                ));
                self.set_health(health, &mut out.events);
                return out;
            }
        };
        // Bounded even for a directory holding millions of entries (listing and `lstat` cost
        // about 2 us an entry). Every entry within the bound is looked at, so that which files
        // are kept over `max_files` depends on their age, not on the directory's hash order.
        let max_listed = self.limits.max_files.saturating_mul(10).max(100_000);
        let mut listed = 0usize;
        let mut truncated = false;
        let mut candidates: Vec<(String, Format, std::fs::Metadata)> = Vec::new();
        let mut bad_names: BTreeSet<String> = BTreeSet::new();
        for entry in entries {
            listed += 1;
            if listed > max_listed {
                truncated = true;
                break;
            }
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not UTF-8: not `<cluster-id>.yaml` either, and not printable.
            };
            // Hidden files: temporary files of atomic writes (ours are `.wgcable-*.tmp`).
            if name.starts_with('.') {
                continue;
            }
            let Some((stem, format)) = endpoint_name(&name) else {
                continue;
            };
            if !crate::util::is_cluster_id(stem) {
                bad_names.insert(name);
                continue;
            }
            match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) => candidates.push((name, format, meta)),
                Err(_) => continue, // Gone since it was listed: handled as missing below.
            }
        }

        for name in &bad_names {
            let key = printable(name);
            self.refuse(
                &key,
                BAD_NAME,
                format!(
                    "{key}: ignored: an endpoint file is named <cluster-id>.yaml, .yml or .json, \
                     with the cluster id a DNS-1123 label"
                ),
                &mut out,
            );
        }

        // Over the cap: files already delivered first, then the oldest. New files cannot push
        // out old ones, whatever their names.
        let over_cap = candidates.len().saturating_sub(self.limits.max_files);
        if over_cap > 0 {
            candidates.sort_by_cached_key(|(name, _, meta)| {
                let delivered = self.files.get(name).is_some_and(|t| t.delivered.is_some());
                (
                    !delivered,
                    created(meta).is_none(),
                    created(meta),
                    name.clone(),
                )
            });
            candidates.truncate(self.limits.max_files);
        }
        let health = if over_cap > 0 || truncated {
            SourceHealth::Unhealthy(format!(
                "the broker directory {} holds more endpoint files than the limit of {}{}; the \
                 oldest are read, the others ignored (raise the limit or remove files)",
                self.dir.display(),
                self.limits.max_files,
                if truncated {
                    " (the listing was cut short)"
                } else {
                    ""
                },
            ))
        } else {
            SourceHealth::Healthy
        };
        self.set_health(health, &mut out.events);

        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (name, format, meta) in candidates {
            seen.insert(name.clone());
            self.scan_file(&name, format, &meta, now, full, &mut out);
        }

        // Files that went away, after `settle` (a remove-then-create is not a delete).
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            let Some(t) = self.files.get_mut(&name) else {
                continue;
            };
            let since = *t.missing_since.get_or_insert(now);
            if now.duration_since(since) >= self.limits.settle {
                let delivered = t.delivered.is_some();
                self.files.remove(&name);
                if delivered {
                    out.events.push(SourceEvent::Delete(ObjectKey(name)));
                }
            } else {
                recheck(&mut out, since + self.limits.settle);
            }
        }
        // Refused names that went away: their refusals go too.
        let present: BTreeSet<String> = seen
            .into_iter()
            .chain(bad_names.iter().map(|n| printable(n)))
            .collect();
        let stale: Vec<String> = self
            .refused
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for name in stale {
            self.refused.remove(&name);
            out.events.push(SourceEvent::Delete(ObjectKey(name)));
        }
        out
    }

    fn scan_file(
        &mut self,
        name: &str,
        format: Format,
        meta: &std::fs::Metadata,
        now: Instant,
        full: bool,
        out: &mut ScanResult,
    ) {
        let key = name;
        if meta.file_type().is_symlink() {
            self.refuse(
                name,
                SYMLINK,
                format!("{key}: refused: a symbolic link (links are never followed, wherever they point)"),
                out,
            );
            return;
        }
        if !meta.file_type().is_file() {
            let kind = fsutil::kind_name(meta);
            self.refuse(
                name,
                NOT_REGULAR_FILE,
                format!("{key}: refused: a {kind}, not a regular file (it is not opened)"),
                out,
            );
            return;
        }
        let stamp = Stamp::of(meta);
        if let Some(t) = self.files.get_mut(name) {
            t.missing_since = None;
            if !full && t.stamp == stamp && t.delivered == Some(t.hash) {
                return; // Unchanged since it was delivered.
            }
        }
        let path = self.dir.join(name);
        let (bytes, before, after) = match fsutil::read_regular(&path, self.limits.max_file_bytes) {
            Ok(ReadOutcome::Read {
                bytes,
                before,
                after,
            }) => (bytes, before, after),
            Ok(ReadOutcome::Refused(ReadRefusal::Symlink)) => {
                // Swapped for a link after it was listed.
                self.refuse(name, SYMLINK, format!("{key}: refused: a symbolic link (links are never followed, wherever they point)"), out);
                return;
            }
            Ok(ReadOutcome::Refused(ReadRefusal::NotRegular(kind))) => {
                self.refuse(
                    name,
                    NOT_REGULAR_FILE,
                    format!("{key}: refused: a {kind}, not a regular file"),
                    out,
                );
                return;
            }
            // Removed between listing and reading: seen as missing at the next scan.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                if self.files.get(name).is_some_and(|t| t.delivered.is_some()) {
                    // Keep its last delivered content; try again at the next scan.
                    return;
                }
                let problem = e.kind();
                self.refuse(
                    name,
                    UNREADABLE,
                    format!("{key}: cannot be read ({problem}); check its permissions"),
                    out,
                );
                return;
            }
        };
        self.refused.remove(name);
        let hash = digest(&bytes);
        // Written while being read, or replaced between the listing and the open.
        let steady = before == after && before.ino == stamp.ino;
        let confirmed = self.files.get(name).is_some_and(|t| {
            t.hash == hash
                && t.stamp == after
                && now.duration_since(t.read_at) >= self.limits.settle
        });
        let already = self
            .files
            .get(name)
            .is_some_and(|t| t.delivered == Some(hash) && t.hash == hash);
        if steady && (confirmed || already) {
            if let Some(t) = self.files.get_mut(name) {
                t.stamp = after;
                if t.delivered != Some(hash) {
                    t.delivered = Some(hash);
                    out.events.push(SourceEvent::Apply(RawObject {
                        key: ObjectKey(name.to_owned()),
                        bound_cluster: endpoint_name(name).map(|(stem, _)| stem.to_owned()),
                        format,
                        bytes,
                        created: created(meta),
                        version: None,
                    }));
                }
            }
            return;
        }
        if let Some(t) = self
            .files
            .get(name)
            .filter(|t| steady && t.hash == hash && t.stamp == after)
        {
            // The same as the last read, but not yet for `settle`: keep waiting from then.
            let at = t.read_at + self.limits.settle;
            recheck(out, at);
            return;
        }
        // New or changed: remember this read; it is delivered when a read `settle` later
        // agrees (the same bytes and the same stamp), so a file caught mid-write is never
        // applied.
        let delivered = self.files.get(name).and_then(|t| t.delivered);
        self.files.insert(
            name.to_owned(),
            Tracked {
                stamp: after,
                hash,
                read_at: now,
                delivered,
                missing_since: None,
            },
        );
        recheck(out, now + self.limits.settle);
    }

    /// Whether every file found was delivered as it is now (the initial snapshot waits for
    /// this, up to a timeout).
    pub fn is_settled(&self) -> bool {
        self.files
            .values()
            .all(|t| t.delivered == Some(t.hash) && t.missing_since.is_none())
    }
}

fn recheck(out: &mut ScanResult, at: Instant) {
    out.recheck_at = Some(out.recheck_at.map_or(at, |r| r.min(at)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ScanLimits {
        ScanLimits {
            max_files: 100,
            max_file_bytes: 1000,
            settle: Duration::from_millis(100),
        }
    }

    fn applied(result: &ScanResult) -> Vec<(String, Vec<u8>)> {
        result
            .events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Apply(o) => Some((o.key.0.clone(), o.bytes.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_change_is_delivered_once_two_reads_a_settle_apart_agree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.yaml");
        let mut scanner = Scanner::new(dir.path().to_owned(), limits());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        std::fs::write(&path, "one").expect("write");
        let r = scanner.scan(ms(0), false);
        assert!(applied(&r).is_empty(), "first sight: not yet");
        assert_eq!(r.recheck_at, Some(ms(100)));
        assert!(applied(&scanner.scan(ms(50), false)).is_empty(), "too soon");
        assert_eq!(
            applied(&scanner.scan(ms(100), false)),
            [("a.yaml".to_string(), b"one".to_vec())]
        );
        assert!(scanner.is_settled());
        assert!(
            applied(&scanner.scan(ms(200), true)).is_empty(),
            "delivered once"
        );
        // Rewritten in place while being watched: each new state restarts the wait.
        std::fs::write(&path, "tw").expect("write");
        assert!(applied(&scanner.scan(ms(300), false)).is_empty());
        std::fs::write(&path, "two").expect("write");
        assert!(
            applied(&scanner.scan(ms(400), false)).is_empty(),
            "changed since the last read"
        );
        assert!(!scanner.is_settled());
        assert_eq!(
            applied(&scanner.scan(ms(500), false)),
            [("a.yaml".to_string(), b"two".to_vec())]
        );
        // A delete is a delete only once it lasts.
        std::fs::remove_file(&path).expect("rm");
        assert!(scanner.scan(ms(600), false).events.is_empty());
        std::fs::write(&path, "two").expect("write");
        assert!(
            applied(&scanner.scan(ms(650), false)).is_empty(),
            "back with new stamps: wait"
        );
        std::fs::remove_file(&path).expect("rm");
        let r = scanner.scan(ms(700), false);
        assert!(r.events.is_empty());
        let r = scanner.scan(ms(800), false);
        assert_eq!(r.events, [SourceEvent::Delete(ObjectKey("a.yaml".into()))]);
    }

    #[test]
    fn names() {
        assert_eq!(endpoint_name("a.yaml"), Some(("a", Format::Yaml)));
        assert_eq!(endpoint_name("a.yml"), Some(("a", Format::Yaml)));
        assert_eq!(endpoint_name("a.json"), Some(("a", Format::Json)));
        assert_eq!(endpoint_name("a.txt"), None);
        assert_eq!(printable("a\nb\u{1b}[31m.yaml"), "a\\nb\\u{1b}[31m.yaml");
        assert_eq!(printable(&"x".repeat(200)).chars().count(), 80);
    }
}
