//! Connection status: a pure state machine over successive looks at a peer's counters.
//!
//! The rules are Submariner's (`getconnections.go`), as a function of the previous verdict, the
//! peer as observed now and the current time - no clock is read here, so tests simulate time.
//!
//! The baseline (`last_checked`, `rx_bytes`, `tx_bytes`) moves only when we first see a peer,
//! when bytes moved (connected), and when it has to be rebased (counters reset, clock stepped
//! back). "Since the last look" therefore means "since traffic was last seen", as upstream.
//!
//! Upstream quirk fixed: upstream measures "no initial handshake" against its baseline, which a
//! brand-new peer does not have yet, so a peer could be reported as an error before it had any
//! chance to shake hands. Here a peer without a handshake is `connecting` ("waiting for the
//! initial handshake") until [`HANDSHAKE_TIMEOUT`] after it was first seen (or last seen
//! working), and only then `error`.

use std::time::{Duration, SystemTime};

use wgcable_api::ConnectionStatus;

use crate::device::PeerStatus;

/// Persistent keepalive of every peer, and the shortest interval between two verdicts.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// A handshake older than this means the peer is gone (WireGuard rekeys every 2 minutes while
/// packets flow, and keepalives make them flow).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(130);

/// What we remember about a peer between looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTrack {
    /// When we first judged this peer.
    pub first_seen: SystemTime,
    /// When the counter baseline below was taken.
    pub last_checked: SystemTime,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub status: ConnectionStatus,
    pub message: String,
    /// The handshake time at which the current connection was first seen established; `None`
    /// while not connected since the last error.
    pub established: Option<SystemTime>,
}

fn rebased(prev: &PeerTrack, peer: &PeerStatus, now: SystemTime) -> PeerTrack {
    PeerTrack {
        last_checked: now,
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
        ..prev.clone()
    }
}

fn with_status(prev: &PeerTrack, status: ConnectionStatus, message: String) -> PeerTrack {
    let established = match status {
        ConnectionStatus::Error => None,
        _ => prev.established,
    };
    PeerTrack {
        status,
        message,
        established,
        ..prev.clone()
    }
}

fn connected_message(peer: &PeerStatus) -> String {
    format!("Rx={} Bytes, Tx={} Bytes", peer.rx_bytes, peer.tx_bytes)
}

/// Judges a peer: `prev` is the previous verdict for the same peer (`None` the first time).
pub fn judge(prev: Option<&PeerTrack>, peer: &PeerStatus, now: SystemTime) -> PeerTrack {
    // A handshake completed within the timeout proves the peer is there: it holds the private
    // key of the public key we configured and answered us. Upstream waits a keepalive interval
    // and a byte delta before saying so, which shows every fresh or adopted connection as
    // `connecting` for 10 s; we say `connected` as soon as the proof is there.
    let fresh = peer
        .last_handshake
        .filter(|hs| now.duration_since(*hs).unwrap_or_default() <= HANDSHAKE_TIMEOUT);
    let Some(prev) = prev else {
        let (status, message) = match fresh {
            Some(_) => (ConnectionStatus::Connected, connected_message(peer)),
            None if peer.last_handshake.is_some() => (
                ConnectionStatus::Connecting,
                "handshake too old, waiting for a new one".to_owned(),
            ),
            None => (
                ConnectionStatus::Connecting,
                "waiting for the initial handshake".to_owned(),
            ),
        };
        return PeerTrack {
            first_seen: now,
            last_checked: now,
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
            status,
            message,
            established: fresh,
        };
    };

    // The wall clock stepped back: durations since the baseline mean nothing. Start a new one
    // rather than freezing the verdict until the clock catches up.
    let Ok(since_check) = now.duration_since(prev.last_checked) else {
        return rebased(prev, peer, now);
    };
    if since_check < KEEPALIVE {
        // Too soon to expect a keepalive's worth of traffic, so no bad news yet; but a fresh
        // handshake is good news that need not wait.
        if let (Some(hs), false) = (fresh, prev.status == ConnectionStatus::Connected) {
            let mut track = rebased(prev, peer, now);
            track.status = ConnectionStatus::Connected;
            track.message = connected_message(peer);
            track.established = Some(hs);
            return track;
        }
        return prev.clone();
    }
    // Counters only go down when the peer was removed and added again: a new baseline.
    if peer.rx_bytes < prev.rx_bytes || peer.tx_bytes < prev.tx_bytes {
        return rebased(prev, peer, now);
    }
    let moved = peer.rx_bytes > prev.rx_bytes || peer.tx_bytes > prev.tx_bytes;

    let Some(handshake) = peer.last_handshake else {
        if since_check > HANDSHAKE_TIMEOUT {
            return with_status(
                prev,
                ConnectionStatus::Error,
                format!("no initial handshake for {}s", since_check.as_secs()),
            );
        }
        let message = if moved {
            "no initial handshake yet"
        } else {
            "waiting for the initial handshake"
        };
        return with_status(prev, ConnectionStatus::Connecting, message.to_owned());
    };

    // A handshake stamped in the future (clock skew between reads) counts as fresh.
    let since_handshake = now.duration_since(handshake).unwrap_or_default();
    // Transmitted bytes alone prove nothing once the handshake is stale: a peer that is gone
    // still makes us send handshake initiations. Received bytes are authenticated by WireGuard,
    // so they do prove the peer is alive. (Upstream counts either, and so reports a dead peer
    // as connected while it retries.)
    let received = peer.rx_bytes > prev.rx_bytes;
    let moved = if since_handshake > HANDSHAKE_TIMEOUT {
        received
    } else {
        moved
    };

    if moved {
        let mut track = rebased(prev, peer, now);
        track.status = ConnectionStatus::Connected;
        track.message = connected_message(peer);
        track.established = prev.established.or(Some(handshake));
        return track;
    }

    if since_handshake > HANDSHAKE_TIMEOUT {
        return with_status(
            prev,
            ConnectionStatus::Error,
            format!("no handshake for {}s", since_handshake.as_secs()),
        );
    }
    if since_check < 2 * KEEPALIVE {
        // One missed keepalive is tolerated before calling it an error.
        return prev.clone();
    }
    with_status(
        prev,
        ConnectionStatus::Error,
        format!("no bytes sent or received for {}s", since_check.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::PeerConfig;
    use wgcable_keys::PublicKey;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn peer(handshake: Option<u64>, rx: u64, tx: u64) -> PeerStatus {
        PeerStatus {
            config: PeerConfig {
                public_key: PublicKey::from_bytes([1; 32]),
                endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: Some(10),
                preshared_key: None,
            },
            last_handshake: handshake.map(t),
            rx_bytes: rx,
            tx_bytes: tx,
        }
    }

    fn track(
        status: ConnectionStatus,
        checked: u64,
        rx: u64,
        tx: u64,
        established: Option<u64>,
    ) -> PeerTrack {
        PeerTrack {
            first_seen: t(0),
            last_checked: t(checked),
            rx_bytes: rx,
            tx_bytes: tx,
            status,
            message: "previous".to_owned(),
            established: established.map(t),
        }
    }

    use ConnectionStatus::{Connected, Connecting, Error};

    struct Case {
        name: &'static str,
        prev: Option<PeerTrack>,
        peer: PeerStatus,
        now: u64,
        status: ConnectionStatus,
        message: &'static str,
        established: Option<u64>,
        /// Where the baseline ends up: (last_checked, rx, tx).
        baseline: (u64, u64, u64),
    }

    #[test]
    fn every_branch() {
        let cases = [
            Case {
                name: "first look, no handshake",
                prev: None,
                peer: peer(None, 0, 0),
                now: 5,
                status: Connecting,
                message: "waiting for the initial handshake",
                established: None,
                baseline: (5, 0, 0),
            },
            Case {
                name: "first look after a gateway restart: a fresh handshake is connected at once",
                prev: None,
                peer: peer(Some(3), 100, 200),
                now: 5,
                status: Connected,
                message: "Rx=100 Bytes, Tx=200 Bytes",
                established: Some(3),
                baseline: (5, 100, 200),
            },
            Case {
                name: "first look with a stale handshake: connecting until a new one",
                prev: None,
                peer: peer(Some(3), 100, 200),
                now: 200,
                status: Connecting,
                message: "handshake too old, waiting for a new one",
                established: None,
                baseline: (200, 100, 200),
            },
            Case {
                name: "less than keepalive since the last look: a fresh handshake connects at once",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(Some(2), 50, 50),
                now: 9,
                status: Connected,
                message: "Rx=50 Bytes, Tx=50 Bytes",
                established: Some(2),
                baseline: (9, 50, 50),
            },
            Case {
                name: "less than keepalive since the last look: no bad news yet",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(4), 1000, 1000),
                now: 109,
                status: Connected,
                message: "previous",
                established: Some(4),
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "upstream quirk fixed: no handshake, no traffic, young peer is connecting",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(None, 0, 0),
                now: 10,
                status: Connecting,
                message: "waiting for the initial handshake",
                established: None,
                baseline: (0, 0, 0),
            },
            Case {
                name: "no handshake, still within the timeout",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(None, 0, 0),
                now: 130,
                status: Connecting,
                message: "waiting for the initial handshake",
                established: None,
                baseline: (0, 0, 0),
            },
            Case {
                name: "no handshake but initiations sent",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(None, 0, 148),
                now: 60,
                status: Connecting,
                message: "no initial handshake yet",
                established: None,
                baseline: (0, 0, 0),
            },
            Case {
                name: "no handshake past the timeout",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(None, 0, 148),
                now: 131,
                status: Error,
                message: "no initial handshake for 131s",
                established: None,
                baseline: (0, 0, 0),
            },
            Case {
                name: "handshake and traffic: connected, established at the handshake",
                prev: Some(track(Connecting, 0, 0, 0, None)),
                peer: peer(Some(4), 92, 148),
                now: 12,
                status: Connected,
                message: "Rx=92 Bytes, Tx=148 Bytes",
                established: Some(4),
                baseline: (12, 92, 148),
            },
            Case {
                name: "still connected after a rekey: established keeps the first handshake",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(124), 1100, 1100),
                now: 130,
                status: Connected,
                message: "Rx=1100 Bytes, Tx=1100 Bytes",
                established: Some(4),
                baseline: (130, 1100, 1100),
            },
            Case {
                name: "stale handshake and no traffic",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(10), 1000, 1000),
                now: 141,
                status: Error,
                message: "no handshake for 131s",
                established: None,
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "stale handshake, only our retries sent: error, not connected",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(10), 1000, 1296),
                now: 141,
                status: Error,
                message: "no handshake for 131s",
                established: None,
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "stale handshake but authenticated bytes received: connected",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(10), 1092, 1148),
                now: 141,
                status: Connected,
                message: "Rx=1092 Bytes, Tx=1148 Bytes",
                established: Some(4),
                baseline: (141, 1092, 1148),
            },
            Case {
                name: "no traffic within the grace period",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(90), 1000, 1000),
                now: 115,
                status: Connected,
                message: "previous",
                established: Some(4),
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "no traffic past the grace period",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(90), 1000, 1000),
                now: 125,
                status: Error,
                message: "no bytes sent or received for 25s",
                established: None,
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "recovery after an error: established at the new handshake",
                prev: Some(track(Error, 100, 1000, 1000, None)),
                peer: peer(Some(200), 1200, 1300),
                now: 205,
                status: Connected,
                message: "Rx=1200 Bytes, Tx=1300 Bytes",
                established: Some(200),
                baseline: (205, 1200, 1300),
            },
            Case {
                name: "counters went down (peer re-created): new baseline, verdict kept",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(105), 10, 20),
                now: 120,
                status: Connected,
                message: "previous",
                established: Some(4),
                baseline: (120, 10, 20),
            },
            Case {
                name: "clock stepped back: new baseline, verdict kept",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(90), 1000, 1000),
                now: 50,
                status: Connected,
                message: "previous",
                established: Some(4),
                baseline: (50, 1000, 1000),
            },
            Case {
                name: "handshake stamped in the future counts as fresh",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(Some(500), 1000, 1000),
                now: 115,
                status: Connected,
                message: "previous",
                established: Some(4),
                baseline: (100, 1000, 1000),
            },
            Case {
                name: "lost handshake after being connected (device re-created), within timeout",
                prev: Some(track(Connected, 100, 1000, 1000, Some(4))),
                peer: peer(None, 1000, 1000),
                now: 150,
                status: Connecting,
                message: "waiting for the initial handshake",
                established: Some(4),
                baseline: (100, 1000, 1000),
            },
        ];
        for case in cases {
            let got = judge(case.prev.as_ref(), &case.peer, t(case.now));
            assert_eq!(got.status, case.status, "{}", case.name);
            assert_eq!(got.message, case.message, "{}", case.name);
            assert_eq!(got.established, case.established.map(t), "{}", case.name);
            assert_eq!(
                (got.last_checked, got.rx_bytes, got.tx_bytes),
                (t(case.baseline.0), case.baseline.1, case.baseline.2),
                "{}",
                case.name
            );
            let first_seen = if case.prev.is_some() {
                t(0)
            } else {
                t(case.now)
            };
            assert_eq!(got.first_seen, first_seen, "{}", case.name);
        }
    }

    #[test]
    fn a_silent_new_peer_goes_from_connecting_to_error_at_the_timeout() {
        // Looked at every 5 s, as the engine does.
        let silent = peer(None, 0, 0);
        let mut track = judge(None, &silent, t(0));
        let mut first_error = None;
        for now in (5..=200).step_by(5) {
            track = judge(Some(&track), &silent, t(now));
            if track.status == Error && first_error.is_none() {
                first_error = Some(now);
            }
            if first_error.is_none() {
                assert_eq!(track.status, Connecting, "at {now}s");
            }
        }
        assert_eq!(first_error, Some(135), "first look past 130 s");
        assert_eq!(track.message, "no initial handshake for 200s");
    }
}
