//! Coalescing source events into batches: a burst of N changes is one batch, and one object
//! changed N times in a burst is one change (its last state).

use std::collections::BTreeMap;

use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

use crate::admission::DebounceConfig;
use crate::{ObjectKey, RawObject, SourceEvent, SourceHealth, SourceProblem};

/// The last state of one object within a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Apply(RawObject),
    Delete,
    Refused(SourceProblem),
}

/// Source events coalesced per object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// `objects` is everything the source holds (a snapshot arrived in this batch; changes
    /// after it are folded in): an object not listed is gone.
    pub snapshot: bool,
    pub objects: BTreeMap<ObjectKey, Change>,
    /// The last health reported in the batch.
    pub health: Option<SourceHealth>,
}

impl Batch {
    /// Folds one event in: later events about an object replace earlier ones, a snapshot
    /// replaces everything before it.
    pub fn fold(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Snapshot(objects) => {
                self.snapshot = true;
                self.objects = objects
                    .into_iter()
                    .map(|o| (o.key.clone(), Change::Apply(o)))
                    .collect();
            }
            SourceEvent::Apply(object) => {
                self.objects
                    .insert(object.key.clone(), Change::Apply(object));
            }
            SourceEvent::Delete(key) => {
                if self.snapshot {
                    // Within a snapshot, absent means gone.
                    self.objects.remove(&key);
                } else {
                    self.objects.insert(key, Change::Delete);
                }
            }
            SourceEvent::Refused { key, problem } => {
                self.objects.insert(key, Change::Refused(problem));
            }
            SourceEvent::Health(health) => self.health = Some(health),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.snapshot && self.objects.is_empty() && self.health.is_none()
    }
}

/// Batches `events`: a batch closes once no event arrived for `config.window`, or at the
/// latest `config.max_wait` after its first event, so a source that never stops changing still
/// yields one batch per `max_wait`, each with the latest state of every object. The batch in
/// progress is delivered when the source ends. Uses tokio's clock (paused time in tests).
///
/// A batch that holds a snapshot closes as soon as no further event is ready: a snapshot is
/// complete already, and waiting for quiet would only delay a gateway's start (or the catch-up
/// after a relist) by up to `max_wait` while other gateways keep publishing.
pub fn debounce(
    events: BoxStream<'static, SourceEvent>,
    config: DebounceConfig,
) -> BoxStream<'static, Batch> {
    futures::stream::unfold(Some(events.fuse()), move |state| async move {
        let mut events = state?;
        let first = events.next().await?;
        let mut batch = Batch::default();
        batch.fold(first);
        let window = |batch: &Batch| {
            if batch.snapshot {
                std::time::Duration::ZERO
            } else {
                config.window
            }
        };
        let hard = Instant::now() + config.max_wait;
        let mut quiet = Instant::now() + window(&batch);
        loop {
            match tokio::time::timeout_at(quiet.min(hard), events.next()).await {
                Ok(Some(event)) => {
                    batch.fold(event);
                    quiet = Instant::now() + window(&batch);
                }
                // The source ended: deliver what there is, then end.
                Ok(None) => return Some((batch, None)),
                Err(_) => return Some((batch, Some(events))),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Format;

    fn raw(name: &str, content: &str) -> RawObject {
        RawObject {
            key: ObjectKey(name.into()),
            bound_cluster: None,
            format: Format::Yaml,
            bytes: content.as_bytes().to_vec(),
            created: None,
            version: None,
        }
    }

    fn config() -> DebounceConfig {
        DebounceConfig {
            window: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_delivered_at_once() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut batches = debounce(rx.boxed(), config());
        tx.unbounded_send(SourceEvent::Snapshot(vec![raw("a.yaml", "0")]))
            .expect("send");
        tx.unbounded_send(SourceEvent::Apply(raw("b.yaml", "0")))
            .expect("send");
        let start = Instant::now();
        let batch = batches.next().await.expect("a batch");
        assert_eq!(start.elapsed(), Duration::ZERO, "no quiet window waited");
        assert!(batch.snapshot);
        assert_eq!(batch.objects.len(), 2, "what was ready came along");
        // Later changes are debounced as usual.
        tx.unbounded_send(SourceEvent::Apply(raw("c.yaml", "0")))
            .expect("send");
        let start = Instant::now();
        let batch = batches.next().await.expect("a batch");
        assert!(!batch.snapshot);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_batch_with_the_last_state_of_each_object() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut batches = debounce(rx.boxed(), config());
        tx.unbounded_send(SourceEvent::Snapshot(vec![
            raw("a.yaml", "0"),
            raw("b.yaml", "0"),
        ]))
        .expect("send");
        for i in 0..1000 {
            tx.unbounded_send(SourceEvent::Apply(raw("a.yaml", &i.to_string())))
                .expect("send");
        }
        tx.unbounded_send(SourceEvent::Delete(ObjectKey("b.yaml".into())))
            .expect("send");
        let batch = batches.next().await.expect("a batch");
        assert!(batch.snapshot);
        assert_eq!(batch.objects.len(), 1, "b was deleted within the snapshot");
        assert_eq!(
            batch.objects.get(&ObjectKey("a.yaml".into())),
            Some(&Change::Apply(raw("a.yaml", "999")))
        );
        // After the snapshot, a delete is a change of its own.
        tx.unbounded_send(SourceEvent::Delete(ObjectKey("a.yaml".into())))
            .expect("send");
        tx.unbounded_send(SourceEvent::Health(SourceHealth::Unhealthy("down".into())))
            .expect("send");
        let batch = batches.next().await.expect("a batch");
        assert!(!batch.snapshot);
        assert_eq!(
            batch.objects.get(&ObjectKey("a.yaml".into())),
            Some(&Change::Delete)
        );
        assert_eq!(batch.health, Some(SourceHealth::Unhealthy("down".into())));
        drop(tx);
        assert_eq!(batches.next().await, None, "the source ended");
    }

    #[tokio::test(start_paused = true)]
    async fn continuous_churn_still_yields_a_batch_per_max_wait() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut batches = debounce(rx.boxed(), config());
        // A writer that never pauses longer than the window: one change every 10 ms.
        let writer = tokio::spawn(async move {
            for i in 0u32.. {
                if tx
                    .unbounded_send(SourceEvent::Apply(raw("a.yaml", &i.to_string())))
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let start = Instant::now();
        for n in 1..=3u32 {
            let batch = batches.next().await.expect("a batch");
            assert_eq!(batch.objects.len(), 1);
            let waited = Instant::now() - start;
            assert!(
                waited <= Duration::from_millis(1010) * n,
                "batch {n} after {waited:?}"
            );
        }
        drop(batches);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_source_closes_the_batch_after_the_window() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut batches = debounce(rx.boxed(), config());
        tx.unbounded_send(SourceEvent::Apply(raw("a.yaml", "1")))
            .expect("send");
        let start = Instant::now();
        let batch = batches.next().await.expect("a batch");
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        assert_eq!(batch.objects.len(), 1);
    }
}
