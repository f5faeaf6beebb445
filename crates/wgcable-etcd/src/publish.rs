//! Writing this cluster's own key with compare-and-swap.
//!
//! What the compare-and-swap protects against: a *superseded* writer of this cluster's key
//! overwriting its successor. Every write is conditional on the key's `mod_revision` being the
//! one this process last wrote (or, for the first write of a process or of a new leadership
//! term, the one it just read). So:
//!
//! - a gateway that starts (or becomes leader) takes the key over deliberately, whatever an
//!   earlier incarnation left there (another key pair, another IP): one read, one conditional
//!   write;
//! - an older incarnation still running (a hung process that wakes up, a former leader that
//!   has not noticed it lost the lease, a second gateway started by mistake with the same
//!   cluster id) finds the revision moved on, stops writing, and says so: the newest writer
//!   wins once, there is no flapping between two writers;
//! - a write whose answer was lost (a timeout after etcd applied it) is recognised on retry
//!   (the key holds exactly our bytes) instead of being taken for someone else's;
//! - a key deleted by `wgcable leave` or an operator is not recreated behind their back by a
//!   running gateway; the next start publishes again.
//!
//! It does not protect against a hostile writer with write access to the key: etcd's own
//! access control does that (a role per cluster that may write only its own key), and the
//! admission layer refuses what such a writer could put in other clusters' keys.

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use crate::layout::show_key;
use crate::Error;

/// What the publisher knows of this cluster's key.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    /// The key of the local cluster, set by the first publish.
    key: Option<String>,
    /// The bytes the key should hold; `None` when nothing is to be published.
    desired: Option<Vec<u8>>,
    /// The key's `mod_revision` after our last write (or when it was found holding exactly
    /// our bytes); `None` before the first write and after a leadership change: the next
    /// write then takes the key over.
    written: Option<i64>,
    /// `desired` is not known to be in etcd yet (a write failed while etcd was unreachable);
    /// the watch retries it when etcd answers again.
    dirty: bool,
    /// Why this gateway stopped writing its key, if it did.
    superseded: Option<String>,
}

/// What a conditional write found when its condition failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Absent,
    Holds { value: Vec<u8>, mod_revision: i64 },
}

/// The next step of a write, decided from what is known (pure).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to write.
    Done,
    /// Write if the key is still at this `mod_revision` (0: if it does not exist).
    PutIf { mod_revision: i64 },
    /// Read the key first (a takeover).
    Read,
}

impl Publisher {
    /// Records the local Endpoint to publish; true when a write is needed.
    pub fn want(&mut self, key: String, bytes: Vec<u8>) -> Result<bool, Error> {
        if let Some(why) = &self.superseded {
            return Err(Error::Superseded { what: why.clone() });
        }
        if self.key.as_deref() != Some(key.as_str()) {
            // Another cluster id than before (a reconfigured gateway): a new key, taken over.
            self.key = Some(key);
            self.written = None;
            self.desired = None;
        }
        if self.desired.as_deref() == Some(bytes.as_slice()) && self.written.is_some() {
            // Rewriting identical bytes would wake every other gateway for nothing.
            self.dirty = false;
            return Ok(false);
        }
        self.desired = Some(bytes);
        self.dirty = true;
        Ok(true)
    }

    /// What to do next for the current `desired`.
    pub fn step(&self) -> Step {
        if !self.dirty || self.desired.is_none() {
            return Step::Done;
        }
        match self.written {
            Some(mod_revision) => Step::PutIf { mod_revision },
            None => Step::Read,
        }
    }

    /// A read (for a takeover) found `found`; returns the step after it.
    pub fn read(&mut self, found: &Found) -> Step {
        match found {
            Found::Absent => Step::PutIf { mod_revision: 0 },
            Found::Holds {
                value,
                mod_revision,
            } if Some(value) == self.desired.as_ref() => {
                self.written = Some(*mod_revision);
                self.dirty = false;
                Step::Done
            }
            Found::Holds { mod_revision, .. } => Step::PutIf {
                mod_revision: *mod_revision,
            },
        }
    }

    /// A conditional write succeeded at `revision`.
    pub fn wrote(&mut self, revision: i64) {
        self.written = Some(revision);
        self.dirty = false;
    }

    /// A conditional write's condition failed and the key holds `found`. During a takeover
    /// (`taking_over`) the caller reads again; otherwise someone else wrote the key since us.
    pub fn lost(&mut self, found: Found, taking_over: bool) -> Result<Step, Error> {
        if let Found::Holds {
            value,
            mod_revision,
        } = &found
        {
            if Some(value) == self.desired.as_ref() {
                // Our own write, whose answer was lost, or an identical one: ours now.
                self.written = Some(*mod_revision);
                self.dirty = false;
                return Ok(Step::Done);
            }
        }
        if taking_over {
            return Ok(self.read(&found));
        }
        let what = self.superseded_by(&found);
        Err(Error::Superseded { what })
    }

    /// The watch saw our key change at `mod_revision` (`value` `None`: deleted). A change
    /// newer than our last write, to other bytes, means another writer: stop writing.
    /// Returns the warning to log, once.
    pub fn observe(&mut self, mod_revision: i64, value: Option<&[u8]>) -> Option<String> {
        let written = self.written?;
        if mod_revision <= written || self.superseded.is_some() {
            return None;
        }
        match value {
            Some(v) if Some(v) == self.desired.as_deref() => {
                self.written = Some(mod_revision);
                self.dirty = false;
                None
            }
            Some(v) => {
                let what = self.superseded_by(&Found::Holds {
                    value: v.to_vec(),
                    mod_revision,
                });
                Some(what)
            }
            None => Some(self.superseded_by(&Found::Absent)),
        }
    }

    fn superseded_by(&mut self, found: &Found) -> String {
        let key = show_key(self.key.as_deref().unwrap_or_default().as_bytes());
        let since = self.written.map_or(String::new(), |r| {
            format!(" since this gateway wrote it at revision {r}")
        });
        let how = match found {
            Found::Absent => "was deleted".to_string(),
            Found::Holds { mod_revision, .. } => {
                format!("was rewritten (revision {mod_revision})")
            }
        };
        let what = format!(
            "the etcd key {key} {how} by another writer{since}: this gateway no longer writes it. \
             If `wgcable leave` or an operator removed it, that stands until this gateway restarts; \
             if another gateway of this cluster is running, stop one of them; restart this gateway to take the key back"
        );
        self.superseded = Some(what.clone());
        self.dirty = false;
        what
    }

    /// A new leadership term (or a fresh start): the next write takes the key over.
    pub fn new_term(&mut self) {
        self.written = None;
        self.superseded = None;
        self.dirty = self.desired.is_some();
    }

    pub fn dirty(&self) -> bool {
        self.dirty && self.superseded.is_none()
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn desired(&self) -> Option<&[u8]> {
        self.desired.as_deref()
    }

    pub fn superseded(&self) -> Option<&str> {
        self.superseded.as_deref()
    }

    /// `written`, for a conditional delete.
    pub fn written(&self) -> Option<i64> {
        self.written
    }

    /// The key was deleted by our own withdraw.
    pub fn withdrawn(&mut self) {
        self.desired = None;
        self.written = None;
        self.dirty = false;
    }
}

/// A request that failed as unavailable sooner than this failed to connect, not to get an
/// answer: another member may answer at once.
const FAST_FAILURE: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a failed attempt is worth repeating at once: it failed fast as unavailable, and
/// tries are left. Right after an outage, the client's channel hands the first request to each
/// member over the connection that failed earlier (tonic reports a reconnecting member's last
/// connect error once), though the member may be back: a publish made then would fail although
/// etcd serves. One retry per member covers it; a timeout is never repeated here (that would
/// multiply the wait), the caller's own retry takes it.
fn retry_now(result: &Result<(), Error>, started: std::time::Instant, tries: &mut usize) -> bool {
    let fast = matches!(result, Err(e) if e.is_unavailable()) && started.elapsed() < FAST_FAILURE;
    if fast && *tries > 0 {
        *tries -= 1;
        return true;
    }
    false
}

/// [`write_once`], repeated at once (up to `members` times) when it failed to connect.
pub(crate) async fn write(
    publisher: &mut Publisher,
    kv: &mut KvClient,
    timeout: std::time::Duration,
    members: usize,
) -> Result<(), Error> {
    let mut tries = members;
    loop {
        let started = std::time::Instant::now();
        let result = write_once(publisher, kv, timeout).await;
        if !retry_now(&result, started, &mut tries) {
            return result;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`delete_once`], repeated at once (up to `members` times) when it failed to connect.
pub(crate) async fn delete(
    publisher: &mut Publisher,
    kv: &mut KvClient,
    key: &str,
    timeout: std::time::Duration,
    members: usize,
) -> Result<(), Error> {
    let mut tries = members;
    loop {
        let started = std::time::Instant::now();
        let result = delete_once(publisher, kv, key, timeout).await;
        if !retry_now(&result, started, &mut tries) {
            return result;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Carries out the publisher's steps against etcd until the key holds `desired` (or a step
/// fails). At most a few rounds: a takeover that keeps losing races gives up and says so.
async fn write_once(
    publisher: &mut Publisher,
    kv: &mut KvClient,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let Some(key) = publisher.key().map(str::to_string) else {
        return Ok(());
    };
    let mut step = publisher.step();
    let taking_over = matches!(step, Step::Read);
    for _ in 0..4 {
        match step {
            Step::Done => return Ok(()),
            Step::Read => {
                let found = get(kv, &key, timeout).await?;
                step = publisher.read(&found);
                if let (Found::Holds { mod_revision, .. }, Step::PutIf { .. }) = (&found, &step) {
                    tracing::info!(key = %key, revision = mod_revision,
                        "replacing the Endpoint an earlier gateway of this cluster left in etcd");
                }
            }
            Step::PutIf { mod_revision } => {
                let value = publisher.desired().unwrap_or_default().to_vec();
                let compare = if mod_revision == 0 {
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision)
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.as_str(), value, None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let action = format!("writing {key} to etcd");
                let resp = tokio::time::timeout(timeout, kv.txn(txn))
                    .await
                    .map_err(|_| Error::timeout(&action, timeout))?
                    .map_err(|e| Error::from_client(&action, e))?;
                if resp.succeeded() {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    publisher.wrote(revision);
                    return Ok(());
                }
                let found = found_after(&resp);
                step = publisher.lost(found, taking_over)?;
            }
        }
    }
    Err(Error::Unavailable {
        action: format!("writing {key} to etcd"),
        source: "another writer kept changing the key during the takeover; retrying later".into(),
    })
}

/// Deletes this cluster's key: conditionally on our last write when there is one, outright
/// when this process never wrote it (`wgcable leave` from a fresh process: a deliberate act).
async fn delete_once(
    publisher: &mut Publisher,
    kv: &mut KvClient,
    key: &str,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    if let Some(why) = publisher.superseded() {
        return Err(Error::Superseded {
            what: format!("not deleting: {why}"),
        });
    }
    let action = format!("deleting {key} from etcd");
    let mut expect = publisher.written();
    for _ in 0..4 {
        let compares = match expect {
            Some(r) => vec![Compare::mod_revision(key, CompareOp::Equal, r)],
            None => vec![],
        };
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = tokio::time::timeout(timeout, kv.txn(txn))
            .await
            .map_err(|_| Error::timeout(&action, timeout))?
            .map_err(|e| Error::from_client(&action, e))?;
        if resp.succeeded() {
            publisher.withdrawn();
            return Ok(());
        }
        let found = found_after(&resp);
        match found {
            Found::Absent => {
                publisher.withdrawn();
                return Ok(());
            }
            Found::Holds {
                value,
                mod_revision,
            } if Some(value.as_slice()) == publisher.desired() => expect = Some(mod_revision),
            found @ Found::Holds { .. } => {
                let what = publisher.superseded_by(&found);
                return Err(Error::Superseded {
                    what: format!("not deleting: {what}"),
                });
            }
        }
    }
    Err(Error::Unavailable {
        action,
        source: "the key kept changing; retrying later".into(),
    })
}

async fn get(kv: &mut KvClient, key: &str, timeout: std::time::Duration) -> Result<Found, Error> {
    let action = format!("reading {key} from etcd");
    let mut resp = tokio::time::timeout(timeout, kv.get(key, None::<GetOptions>))
        .await
        .map_err(|_| Error::timeout(&action, timeout))?
        .map_err(|e| Error::from_client(&action, e))?;
    Ok(found_in(resp.take_kvs()))
}

/// What a failed compare-and-swap found at the key: its `or_else` get's answer.
fn found_after(resp: &etcd_client::TxnResponse) -> Found {
    resp.op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(mut get) => Some(found_in(get.take_kvs())),
            _ => None,
        })
        .unwrap_or(Found::Absent)
}

fn found_in(kvs: Vec<etcd_client::KeyValue>) -> Found {
    match kvs.into_iter().next() {
        None => Found::Absent,
        Some(kv) => {
            let mod_revision = kv.mod_revision();
            let (_, value) = kv.into_key_value();
            Found::Holds {
                value,
                mod_revision,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/w/endpoints/a";

    fn holds(value: &[u8], rev: i64) -> Found {
        Found::Holds {
            value: value.to_vec(),
            mod_revision: rev,
        }
    }

    #[test]
    fn a_fresh_start_takes_the_key_over() {
        let mut p = Publisher::default();
        assert!(p.want(KEY.into(), b"new".to_vec()).expect("want"));
        assert_eq!(p.step(), Step::Read);
        // An earlier incarnation's Endpoint: replaced, conditionally on what was read.
        assert_eq!(p.read(&holds(b"old", 7)), Step::PutIf { mod_revision: 7 });
        p.wrote(9);
        assert_eq!(p.step(), Step::Done);
        assert!(!p.want(KEY.into(), b"new".to_vec()).expect("want"), "no-op");
        assert!(!p.dirty());

        let mut p = Publisher::default();
        p.want(KEY.into(), b"new".to_vec()).expect("want");
        assert_eq!(p.read(&Found::Absent), Step::PutIf { mod_revision: 0 });
        // Same bytes already there (an ordinary restart): adopted, nothing written.
        let mut p = Publisher::default();
        p.want(KEY.into(), b"same".to_vec()).expect("want");
        assert_eq!(p.read(&holds(b"same", 4)), Step::Done);
        assert_eq!(p.written(), Some(4));
    }

    #[test]
    fn a_takeover_that_loses_a_race_reads_again() {
        let mut p = Publisher::default();
        p.want(KEY.into(), b"new".to_vec()).expect("want");
        p.read(&holds(b"old", 7));
        let step = p.lost(holds(b"other", 8), true).expect("takeover goes on");
        assert_eq!(step, Step::PutIf { mod_revision: 8 });
    }

    #[test]
    fn a_superseded_writer_stops() {
        let mut p = Publisher::default();
        p.want(KEY.into(), b"v1".to_vec()).expect("want");
        p.read(&Found::Absent);
        p.wrote(5);
        assert!(p.want(KEY.into(), b"v2".to_vec()).expect("want"));
        assert_eq!(p.step(), Step::PutIf { mod_revision: 5 });
        let err = p
            .lost(holds(b"theirs", 6), false)
            .expect_err("someone else wrote");
        let text = err.to_string();
        assert!(text.contains("rewritten (revision 6)"), "{text}");
        assert!(
            text.contains("since this gateway wrote it at revision 5"),
            "{text}"
        );
        assert!(!text.contains("theirs"), "no value in messages: {text}");
        assert!(p.want(KEY.into(), b"v3".to_vec()).is_err(), "sticky");
        assert!(!p.dirty());
        // A new leadership term takes the key back.
        p.new_term();
        assert!(p.want(KEY.into(), b"v3".to_vec()).expect("want"));
        assert_eq!(p.step(), Step::Read);
    }

    #[test]
    fn a_lost_answer_is_recognised_as_our_own_write() {
        let mut p = Publisher::default();
        p.want(KEY.into(), b"v1".to_vec()).expect("want");
        p.wrote(5);
        p.want(KEY.into(), b"v2".to_vec()).expect("want");
        // The write landed at 6 but its answer was lost; the retry's condition (5) fails.
        assert_eq!(p.lost(holds(b"v2", 6), false).expect("ours"), Step::Done);
        assert_eq!(p.written(), Some(6));
    }

    #[test]
    fn the_watch_notices_other_writers() {
        let mut p = Publisher::default();
        assert_eq!(p.observe(3, Some(b"x")), None, "nothing written yet");
        p.want(KEY.into(), b"v1".to_vec()).expect("want");
        p.wrote(5);
        assert_eq!(p.observe(5, Some(b"v1")), None, "our own write");
        assert_eq!(p.observe(4, Some(b"old")), None, "older than ours");
        assert_eq!(p.observe(6, Some(b"v1")), None, "identical bytes");
        assert_eq!(p.written(), Some(6));
        let warning = p.observe(7, None).expect("deleted by someone");
        assert!(warning.contains("was deleted"), "{warning}");
        assert_eq!(p.observe(8, Some(b"x")), None, "warned once");
        assert!(p.want(KEY.into(), b"v1".to_vec()).is_err());
    }

    #[test]
    fn a_new_cluster_id_is_a_new_key() {
        let mut p = Publisher::default();
        p.want(KEY.into(), b"v".to_vec()).expect("want");
        p.wrote(5);
        assert!(p
            .want("/w/endpoints/b".into(), b"v".to_vec())
            .expect("want"));
        assert_eq!(p.step(), Step::Read);
    }
}
