//! Connection status: the device's handshakes and traffic judged with Submariner's rules
//! ([`wgcable_peers::judge`]), refined by the health checker, fed to the metrics, and kept for
//! the HTTP server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wgcable_api::{Connection, ConnectionReport, ConnectionStatus};
use wgcable_keys::PublicKey;
use wgcable_metrics::CableLabels;
use wgcable_peers::{DeviceStatus, PeerStatus};

use super::{State, Tracked, WireGuardDriver};
use crate::config::CABLE_DRIVER_NAME;
use crate::health::HealthKey;
use crate::Error;

/// How long a status poll waits for the device: a userspace implementation that is stopped
/// (SIGSTOP) or wedged accepts the connection and never answers.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the HTTP server reads without waiting on a reconcile.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub reports: Arc<Vec<ConnectionReport>>,
    pub ready: bool,
    /// The last poll got an answer from the device.
    pub device_answers: bool,
    /// The last poll found the device, or peers the driver configured, missing.
    pub needs_repair: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            reports: Arc::default(),
            ready: false,
            device_answers: true,
            needs_repair: false,
        }
    }
}

impl WireGuardDriver {
    pub(crate) fn set_ready(&self, ready: bool) {
        if let Ok(mut s) = self.snapshot.lock() {
            s.ready = ready;
        }
    }

    /// Judges every connection now, feeds the metrics and keeps the result for
    /// [`WireGuardDriver::last_reports`] (what `/connections` serves, shared, not copied);
    /// [`CableDriver::connections`](super::CableDriver) is this as Submariner's objects.
    pub async fn poll(&self) -> Result<Arc<Vec<ConnectionReport>>, Error> {
        let mut st = self.state.lock().await;
        let name = &self.config.device;
        let read = tokio::time::timeout(DEVICE_TIMEOUT, self.device.read(name)).await;
        let observed = match read {
            Ok(result) => {
                result.map_err(Error::device(format!("reading WireGuard device {name}")))?
            }
            Err(_) => {
                // Every connection is in error, and the gateway not ready, until it answers.
                let reports = self.unanswered(&st);
                if let Ok(mut s) = self.snapshot.lock() {
                    s.reports = Arc::new(reports);
                    s.device_answers = false;
                }
                return Err(Error::DeviceTimeout {
                    device: name.clone(),
                    waited: DEVICE_TIMEOUT,
                });
            }
        };
        let missing = match &observed {
            None => st.reconciled,
            Some(d) => {
                let on_device: std::collections::HashSet<PublicKey> =
                    d.peers.iter().map(|p| p.config.public_key).collect();
                st.cache.is_some()
                    && st
                        .book
                        .peers()
                        .iter()
                        .any(|p| !on_device.contains(&p.config.public_key))
            }
        };
        let reports = Arc::new(self.judge_all(&mut st, observed.as_ref(), SystemTime::now()));
        if let Ok(mut s) = self.snapshot.lock() {
            s.reports = reports.clone();
            s.device_answers = true;
            s.needs_repair = missing;
        }
        Ok(reports)
    }

    /// The last judged connections, without waiting for a reconcile.
    pub fn last_connections(&self) -> Vec<Connection> {
        self.last_reports()
            .into_iter()
            .map(|r| r.connection)
            .collect()
    }

    /// The last judged connections with their traffic figures (what `/connections` serves).
    pub fn last_reports(&self) -> Vec<ConnectionReport> {
        self.snapshot
            .lock()
            .map(|s| s.reports.as_ref().clone())
            .unwrap_or_default()
    }

    /// True once the device is configured and the first reconcile went through.
    pub fn is_ready(&self) -> bool {
        self.snapshot.lock().map(|s| s.ready).unwrap_or(false)
    }

    /// False when the last status poll got no answer from the device in time.
    pub fn device_answers(&self) -> bool {
        self.snapshot
            .lock()
            .map(|s| s.device_answers)
            .unwrap_or(true)
    }

    /// True when the last status poll found the device, or a peer the driver configured,
    /// missing (a killed userspace process, a peer removed by hand): the gateway repairs it
    /// at once instead of waiting for the next resync.
    pub fn needs_repair(&self) -> bool {
        self.snapshot
            .lock()
            .map(|s| s.needs_repair)
            .unwrap_or(false)
    }

    /// Every connection in error because the device does not answer.
    fn unanswered(&self, st: &State) -> Vec<ConnectionReport> {
        st.remotes
            .values()
            .map(|remote| {
                let mut conn = Connection::new(
                    remote.published.clone(),
                    remote.use_ip.to_string(),
                    remote.use_nat,
                );
                conn.set_status(
                    ConnectionStatus::Error,
                    format!(
                        "the WireGuard device does not answer (no reply in {}s; a userspace process that is stopped or wedged?)",
                        DEVICE_TIMEOUT.as_secs()
                    ),
                );
                conn.into()
            })
            .collect()
    }

    /// Upstream's labels for the cable (see [`CableLabels::for_cable`]).
    fn labels(&self, remote: &super::Remote) -> CableLabels {
        CableLabels::for_cable(CABLE_DRIVER_NAME, &self.local.spec, &remote.endpoint.spec)
    }

    fn judge_all(
        &self,
        st: &mut State,
        observed: Option<&DeviceStatus>,
        now: SystemTime,
    ) -> Vec<ConnectionReport> {
        let by_key: HashMap<PublicKey, &PeerStatus> = observed
            .map(|d| d.peers.iter().map(|p| (p.config.public_key, p)).collect())
            .unwrap_or_default();
        let mut out: Vec<ConnectionReport> = Vec::with_capacity(st.remotes.len());
        for (cluster, remote) in &st.remotes {
            let mut conn = Connection {
                status: ConnectionStatus::Error,
                status_message: String::new(),
                endpoint: remote.published.clone(),
                using_ip: remote.use_ip.to_string(),
                using_nat: remote.use_nat,
                latency_rtt: None,
            };
            let Some(peer) = st.book.peer(cluster) else {
                if let Some(reason) = st.book.refusal(cluster) {
                    conn.status_message = format!("refused: {}", crate::error::chain(reason));
                }
                out.push(conn.into());
                continue;
            };
            let key = peer.config.public_key;
            let Some(status) = by_key.get(&key).copied() else {
                conn.status = ConnectionStatus::Connecting;
                conn.status_message = if observed.is_some() {
                    "peer not configured on the device yet".into()
                } else {
                    "the WireGuard device is missing; it is created again at the next resync".into()
                };
                out.push(conn.into());
                continue;
            };
            let mut prev = st.tracked.get_mut(cluster).filter(|t| t.key == key);
            // A cable's labels are made once per Endpoint, not at every poll.
            let fresh = match &prev {
                Some(p) if Arc::ptr_eq(&p.endpoint, &remote.endpoint) => None,
                _ => Some(self.labels(remote)),
            };
            if let (Some(p), Some(l)) = (&prev, &fresh) {
                if &p.labels != l {
                    // The endpoint IP or hostname changed: the old series would linger otherwise.
                    self.metrics.remove_cable(&p.labels);
                }
            }
            let previous_status = prev.as_ref().map(|t| t.reported);
            let track = wgcable_peers::judge(prev.as_ref().map(|t| &t.track), status, now);
            let labels: &CableLabels = match (&fresh, &prev) {
                (Some(l), _) => l,
                (None, Some(p)) => &p.labels,
                (None, None) => unreachable!("labels are fresh when nothing is tracked"),
            };
            conn.status = track.status;
            conn.status_message = track.message.clone();
            // The health check, when there is one and it has a verdict, refines WireGuard's:
            // a handshake proves the peer's key, a ping proves the path through the tunnel.
            if let Some(health) = &self.health {
                // One pinger per IP family; latency is reported for the first family that has
                // a verdict (IPv4 first, as Submariner's single healthCheckIP), and either
                // family failing is an error: a dual-stack tunnel that drops IPv6 is broken.
                let verdicts: Vec<(HealthKey, crate::health::HealthStatus)> =
                    HealthKey::both(cluster)
                        .into_iter()
                        .filter_map(|k| health.status(&k).map(|h| (k, h)))
                        .collect();
                if let Some((_, h)) = verdicts.iter().find(|(_, h)| h.latency.is_some()) {
                    conn.latency_rtt = h.latency.clone();
                    if let Some(rtt) = h.last_rtt {
                        self.metrics.set_latency(labels, rtt.as_secs_f64());
                    }
                }
                if let Some((key, h)) = verdicts.iter().find(|(_, h)| h.failed) {
                    if conn.status == ConnectionStatus::Connected {
                        conn.status = ConnectionStatus::Error;
                        conn.status_message = format!(
                            "Failed to successfully ping the remote endpoint's {} health-check IP ({} lost in a row)",
                            key.family_name(),
                            h.consecutive_lost
                        );
                    }
                }
            }
            if previous_status != Some(conn.status) {
                log_transition(cluster, previous_status, &conn);
            }
            let age = status
                .last_handshake
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs_f64());
            self.metrics.record_poll(
                labels,
                &wgcable_metrics::CablePoll {
                    status: conn.status,
                    rx_bytes: status.rx_bytes,
                    tx_bytes: status.tx_bytes,
                    established: track
                        .established
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64()),
                    last_handshake_age: age,
                },
            );
            match (prev.take(), fresh) {
                (Some(p), None) => {
                    p.track = track;
                    p.reported = conn.status;
                }
                (_, Some(labels)) => {
                    st.tracked.insert(
                        cluster.clone(),
                        Tracked {
                            key,
                            endpoint: remote.endpoint.clone(),
                            track,
                            labels,
                            reported: conn.status,
                        },
                    );
                }
                (None, None) => unreachable!("labels are fresh when nothing is tracked"),
            }
            out.push(ConnectionReport {
                connection: conn,
                rx_bytes: Some(status.rx_bytes),
                tx_bytes: Some(status.tx_bytes),
                last_handshake_seconds: age,
            });
        }
        out
    }
}

/// One line per change of a connection's status, with the reason: people read these to learn
/// when a tunnel went down and why.
fn log_transition(cluster: &str, from: Option<ConnectionStatus>, conn: &Connection) {
    let from = from.map_or("new", ConnectionStatus::as_str);
    let to = conn.status.as_str();
    match conn.status {
        ConnectionStatus::Error => {
            tracing::warn!(cluster = %cluster, from, to, reason = %conn.status_message, "connection status changed")
        }
        _ => {
            tracing::info!(cluster = %cluster, from, to, reason = %conn.status_message, "connection status changed")
        }
    }
}
