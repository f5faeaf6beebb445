//! Health checking of connections (Submariner's cable engine health checker): one ICMP echo
//! pinger per remote gateway, to its `healthCheckIP`, sent from the local health-check IP so
//! that it goes through the tunnel. A probe goes out every interval (Submariner: 1 s); more
//! than [`MAX_CONSECUTIVE_LOST`] lost in a row marks the connection failed, and the round-trip
//! times feed `latencyRTT` and `submariner_connection_latency_seconds`.
//!
//! - [`PingStats`] is the pure core: probes sent, replies and timeouts in, with `now` passed in;
//!   it knows no sockets and no clock, so its tests need neither root nor sleeps.
//! - [`HealthChecker`] is the thin async layer. The engine owns it: it calls
//!   [`HealthChecker::set_targets`] when remotes change, reads [`HealthChecker::status`] when it
//!   judges connections, and spawns [`HealthChecker::run`], which in turn runs one task per
//!   target for as long as it runs (and only then).
//!
//! Sockets: a raw ICMP socket (needs `CAP_NET_RAW`), else an unprivileged ping socket (allowed
//! by `net.ipv4.ping_group_range`). When neither can be opened, or the source address cannot
//! be bound yet, the health of that connection is *unknown* (`None`), never failed: a gateway
//! without the privilege must not turn every connection to `error`. It is logged once.
//!
//! This module knows nothing of WireGuard, netlink or metrics: the engine maps its status onto
//! connections and the latency gauge.

mod checker;
mod icmp;
mod stats;
mod target;

pub use checker::{HealthChecker, HealthStatus};
#[allow(unused_imports)]
use icmp::*;
#[allow(unused_imports)]
use stats::*;
pub use stats::{go_duration, PingStats};
pub use target::*;

/// `maxPacketLossCount`).
pub const MAX_CONSECUTIVE_LOST: u32 = 5;

/// How many round-trip times the statistics are computed over.
pub const STATS_WINDOW: usize = 64;

/// Probes awaiting a reply are bounded too, in case nobody expires them.
const MAX_IN_FLIGHT: usize = 64;

/// Carried in every echo request and checked in replies, so that another program's echoes
/// (raw sockets see them all) are never taken for ours.
const PAYLOAD: &[u8] = b"wgcable-health";

/// A pinger's receive buffer: an echo reply is at most a 60-byte IPv4 header, the 8-byte
/// ICMP header and [`PAYLOAD`]; anything longer is cut (and is not ours). Small because there
/// is one per remote and family: 1,000 dual-stack remotes have 2,000 pingers, and at the
/// 2 KiB used before that is 4 MiB of buffers by arithmetic (not measured: bench case 5 runs
/// without health-check IPs, so it has no pingers).
const RECV_BYTES: usize = 128;
const _: () = assert!(RECV_BYTES >= 60 + 8 + PAYLOAD.len());

#[cfg(test)]
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::sync::Arc;
    use wgcable_api::LatencyRtt;
    use wgcable_netlink::IpFamily;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Sends probe `seq` at `t0 + sent` and answers it at `t0 + sent + rtt`.
    fn answered(stats: &mut PingStats, t0: Instant, seq: u16, sent: Duration, rtt: Duration) {
        stats.record(seq, t0 + sent);
        assert_eq!(stats.reply(seq, t0 + sent + rtt), Some(rtt));
    }

    #[test]
    fn go_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (us(1), "1µs"),
            (us(250), "250µs"),
            (Duration::from_nanos(292_800), "292.8µs"),
            (ms(1), "1ms"),
            (Duration::from_nanos(1_234_000), "1.234ms"),
            (Duration::from_nanos(1_000_001), "1.000001ms"),
            (ms(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (ms(1500), "1.5s"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
            (Duration::from_secs(60), "1m0s"),
            (ms(123_500), "2m3.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3600 * 25 + 61), "25h1m1s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn statistics_over_replies() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        assert_eq!(stats.latency_rtt(), None);
        assert_eq!(
            (stats.last(), stats.mean(), stats.std_dev()),
            (None, None, None)
        );
        for (seq, rtt) in [
            (1, 2),
            (2, 4),
            (3, 4),
            (4, 4),
            (5, 5),
            (6, 5),
            (7, 7),
            (8, 9),
        ] {
            answered(&mut stats, t0, seq, ms(u64::from(seq) * 1000), ms(rtt));
        }
        // The textbook sample: mean 5, population standard deviation 2.
        assert_eq!(stats.last(), Some(ms(9)));
        assert_eq!(stats.min(), Some(ms(2)));
        assert_eq!(stats.max(), Some(ms(9)));
        assert_eq!(stats.mean(), Some(ms(5)));
        assert_eq!(stats.std_dev(), Some(ms(2)));
        let latency = stats.latency_rtt().expect("replies seen");
        assert_eq!(
            latency,
            LatencyRtt {
                last: "9ms".into(),
                min: "2ms".into(),
                average: "5ms".into(),
                max: "9ms".into(),
                std_dev: "2ms".into(),
            }
        );
    }

    #[test]
    fn window_keeps_the_latest_samples() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        // One slow outlier, then a full window of fast replies pushes it out.
        answered(&mut stats, t0, 0, ms(0), ms(900));
        let n = STATS_WINDOW as u16;
        for seq in 1..=n {
            answered(
                &mut stats,
                t0,
                seq,
                ms(u64::from(seq) * 1000),
                us(250 + u64::from(seq)),
            );
        }
        assert_eq!(stats.max(), Some(us(250 + u64::from(n))));
        assert_eq!(stats.min(), Some(us(251)));
        assert_eq!(stats.mean(), Some(Duration::from_nanos(250_000 + 32_500)));
        assert_eq!(stats.latency_rtt().expect("replies").min, "251µs");
    }

    #[test]
    fn losses_in_a_row_fail_and_a_reply_recovers() {
        let t0 = Instant::now();
        let timeout = ms(1000);
        let mut stats = PingStats::new();
        answered(&mut stats, t0, 1, ms(0), ms(3));
        // Probes every second, none answered: each expires at the next tick.
        for (i, seq) in (2..=7u16).enumerate() {
            let now = t0 + ms(1000 * (i as u64 + 1));
            stats.expire(now, timeout);
            stats.record(seq, now);
            assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST), "after {i} lost");
        }
        assert_eq!(stats.consecutive_lost(), 5);
        // Not yet timed out: still 5.
        assert_eq!(stats.expire(t0 + ms(6999), timeout), 0);
        assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST));
        // The sixth loss in a row is one more than allowed.
        assert_eq!(stats.expire(t0 + ms(7000), timeout), 1);
        assert_eq!(stats.consecutive_lost(), 6);
        assert!(stats.is_failed(MAX_CONSECUTIVE_LOST));
        // The statistics of earlier replies remain.
        assert_eq!(stats.last(), Some(ms(3)));
        // A reply that comes after its timeout changes nothing; a timely one recovers.
        assert_eq!(stats.reply(7, t0 + ms(7100)), None);
        assert!(stats.is_failed(MAX_CONSECUTIVE_LOST));
        answered(&mut stats, t0, 8, ms(8000), ms(4));
        assert_eq!(stats.consecutive_lost(), 0);
        assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST));
        assert_eq!(stats.last(), Some(ms(4)));
    }

    #[test]
    fn send_failures_count_as_losses_and_duplicates_are_ignored() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        for _ in 0..6 {
            stats.send_failed();
        }
        assert!(stats.is_failed(5));
        assert!(!stats.is_failed(6));
        answered(&mut stats, t0, 9, ms(0), ms(1));
        assert_eq!(stats.reply(9, t0 + ms(2)), None, "duplicate reply");
        assert_eq!(stats.reply(10, t0 + ms(2)), None, "never sent");
        assert_eq!(stats.consecutive_lost(), 0);
    }

    #[test]
    fn in_flight_probes_are_bounded() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        for seq in 0..(MAX_IN_FLIGHT as u16 + 3) {
            stats.record(seq, t0 + ms(u64::from(seq)));
        }
        // Nobody expired them: the three oldest were dropped as lost.
        assert_eq!(stats.consecutive_lost(), 3);
        assert_eq!(stats.reply(0, t0 + ms(100)), None);
        assert!(stats.reply(3, t0 + ms(100)).is_some());
    }

    #[test]
    fn echo_request_and_reply_wire_format() {
        let request = encode_echo(false, 0x1234, 0xabcd);
        assert_eq!(&request[..2], &[8, 0]);
        assert_eq!(&request[4..8], &[0x12, 0x34, 0xab, 0xcd]);
        assert_eq!(&request[8..], PAYLOAD);
        assert_eq!(checksum(&request), 0, "a valid checksum sums to zero");

        let mut reply = request.clone();
        reply[0] = 0;
        assert_eq!(
            parse_reply(&reply, false, false, Some(0x1234)),
            Some(0xabcd)
        );
        assert_eq!(parse_reply(&reply, false, false, None), Some(0xabcd));
        assert_eq!(parse_reply(&reply, false, false, Some(0x1235)), None);
        assert_eq!(parse_reply(&request, false, false, None), None, "a request");

        // Raw IPv4 sockets deliver the IP header (here with 4 bytes of options) first.
        let mut with_header = vec![0x46];
        with_header.extend_from_slice(&[0; 23]);
        with_header.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&with_header, false, true, Some(0x1234)),
            Some(0xabcd)
        );

        let v6 = encode_echo(true, 7, 8);
        assert_eq!(&v6[..4], &[128, 0, 0, 0], "the kernel fills the checksum");
        let mut v6_reply = v6.clone();
        v6_reply[0] = 129;
        assert_eq!(parse_reply(&v6_reply, true, false, Some(7)), Some(8));
        assert_eq!(
            parse_reply(&reply, true, false, None),
            None,
            "an IPv4 reply"
        );

        let mut other_payload = reply.clone();
        other_payload[8] ^= 0xff;
        assert_eq!(parse_reply(&other_payload, false, false, None), None);
    }

    #[test]
    fn malformed_packets_do_not_panic() {
        let reply = {
            let mut r = encode_echo(false, 1, 2);
            r[0] = 0;
            r
        };
        for len in 0..reply.len() {
            assert_eq!(parse_reply(&reply[..len], false, false, None), None);
            assert_eq!(parse_reply(&reply[..len], false, true, None), None);
        }
        assert_eq!(
            parse_reply(&[0x41, 0, 0, 0], false, true, None),
            None,
            "IHL < 5"
        );
        assert_eq!(parse_reply(&[0x4f], false, true, None), None);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn picks_a_target_of_a_family_both_sides_have() {
        let v4 = ip("10.1.0.1");
        let v6 = ip("fd00:1::1");
        let local = [ip("fd00:2::1")];
        let t = HealthTarget::pick("east", &[v4, v6], &local).expect("target");
        assert_eq!((t.dst, t.src), (v6, Some(local[0])));
        assert_eq!(t.key, HealthKey::new("east", IpFamily::V6));
        let t = HealthTarget::pick("east", &[v4, v6], &[]).expect("target");
        assert_eq!((t.dst, t.src), (v4, None));
        assert_eq!(HealthTarget::pick("east", &[], &local), None);
    }

    #[test]
    fn one_target_per_family_both_sides_have() {
        let (r4, r6, l4, l6) = (
            ip("10.1.0.1"),
            ip("fd00:1::1"),
            ip("10.2.0.1"),
            ip("fd00:2::1"),
        );
        let ts = HealthTarget::per_family("east", &[r4, r6], &[l4, l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.key.to_string(), t.dst, t.src))
            .collect();
        assert_eq!(
            got,
            vec![
                ("east/IPv4".to_string(), r4, Some(l4)),
                ("east/IPv6".to_string(), r6, Some(l6))
            ]
        );
        let ts = HealthTarget::per_family("east", &[r4, r6], &[l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.key.to_string(), t.dst, t.src))
            .collect();
        assert_eq!(got, vec![("east/IPv6".to_string(), r6, Some(l6))]);
        // Families that do not meet: the remote's first address, no source.
        let ts = HealthTarget::per_family("east", &[r4], &[l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.key.to_string(), t.dst, t.src))
            .collect();
        assert_eq!(got, vec![("east/IPv4".to_string(), r4, None)]);
        assert!(HealthTarget::per_family("east", &[], &[l4]).is_empty());
        assert_eq!(
            HealthKey::both("east").map(|k| k.to_string()),
            ["east/IPv4".to_string(), "east/IPv6".to_string()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_not_failed_when_the_socket_cannot_be_opened() {
        // A source of the other family is refused before any socket is opened, so nothing is
        // sent from this (the host's) namespace; health must stay unknown, not failed.
        let checker = Arc::new(HealthChecker::new(ms(1000), ms(1000)));
        let east = HealthKey::new("east", IpFamily::V4);
        let target = HealthTarget {
            key: east.clone(),
            dst: ip("192.0.2.1"),
            src: Some(ip("::1")),
        };
        checker.set_targets(vec![target]);
        assert_eq!(checker.status(&east), None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(checker.clone().run(async move {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while checker.socket_error(&east).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no socket error seen"
            );
            tokio::time::sleep(ms(100)).await;
        }
        // Keep it retrying well past the point where losses would have failed it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(checker.status(&east), None);
        let error = checker.socket_error(&east).expect("still failing");
        assert!(error.contains("different families"), "{error}");
        checker.set_targets(Vec::new());
        assert_eq!(checker.socket_error(&east), None);
        let _ = stop.send(());
        run.await.expect("run ends on shutdown");
    }
}

/// Real pings, each test in a fresh network namespace of its own (its thread unshares
/// `CLONE_NEWNET`), so nothing of the host's network is touched or reached.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use std::net::IpAddr;
    use std::sync::Arc;
    use wgcable_netlink::IpFamily;

    /// The key of a test target: its name ends in 4 or 6, its family.
    fn k(cluster: &str) -> HealthKey {
        let family = if cluster.ends_with('6') {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        HealthKey::new(cluster, family)
    }
    use wgcable_netlink::testing::in_netns;
    use wgcable_netlink::{LinkKind, Netlink, RtNetlink};

    /// A link that is up and drops what is routed to it, like a tunnel that is down: a dummy,
    /// else one end of a veth pair whose other end has no such address.
    async fn dark_link(nl: &RtNetlink, name: &str) -> u32 {
        let link = match nl.link_add(name, &LinkKind::Dummy).await {
            Ok(link) => link,
            Err(e) if e.is_unsupported() => {
                let peer = format!("{name}-p");
                let link = nl
                    .link_add(name, &LinkKind::Veth { peer: peer.clone() })
                    .await
                    .expect("add veth");
                let peer = nl.link_get(&peer).await.expect("get peer").expect("peer");
                nl.link_set_up(peer.index, true).await.expect("set peer up");
                link
            }
            Err(e) => panic!("add dummy {name}: {e}"),
        };
        nl.link_set_up(link.index, true).await.expect("set link up");
        link.index
    }

    fn target(cluster: &str, dst: &str, src: &str) -> HealthTarget {
        HealthTarget {
            key: k(cluster),
            dst: dst.parse().expect("dst"),
            src: Some(src.parse().expect("src")),
        }
    }

    /// Polls `cond` every few milliseconds until it holds, failing after a deadline.
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn rtts_from_live_targets_and_losses_from_dark_ones() {
        in_netns(
            "health::rtts_from_live_targets_and_losses_from_dark_ones",
            |nl| async move {
                let dark = dark_link(&nl, "hc0").await;
                for addr in ["192.0.2.1/24", "2001:db8::1/64"] {
                    nl.addr_add(dark, addr.parse().expect("prefix"))
                        .await
                        .expect("add address");
                }
                // Probes every 20 ms; a generous timeout so a loaded machine does not lose
                // loopback replies, while the dark targets still fail within a second.
                let checker = Arc::new(HealthChecker::new(
                    Duration::from_millis(20),
                    Duration::from_millis(500),
                ));
                let live = [
                    target("lo4", "127.0.0.1", "127.0.0.1"),
                    target("lo6", "::1", "::1"),
                ];
                let silent = [
                    target("dark4", "192.0.2.2", "192.0.2.1"),
                    target("dark6", "2001:db8::2", "2001:db8::1"),
                ];
                checker.set_targets(live.iter().chain(&silent).cloned().collect());
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let run = tokio::spawn(checker.clone().run(async move {
                    let _ = stopped.await;
                }));

                for t in &live {
                    let id = &t.key;
                    wait_for(&format!("{id} to have an RTT"), || {
                        checker.status(id).is_some_and(|s| s.latency.is_some())
                    })
                    .await;
                    let status = checker.status(id).expect("known");
                    assert!(!status.failed, "{id}: {status:?}");
                    let last = status.last_rtt.expect("an RTT");
                    assert!(
                        last > Duration::ZERO && last < Duration::from_secs(1),
                        "{last:?}"
                    );
                    let latency = status.latency.expect("latency");
                    for field in [&latency.last, &latency.min, &latency.average, &latency.max] {
                        assert!(field.ends_with('s') && field != "0s", "{id}: {latency:?}");
                    }
                    assert_eq!(latency.last, go_duration(last));
                }
                for t in &silent {
                    let id = &t.key;
                    wait_for(&format!("{id} to fail"), || {
                        checker.status(id).is_some_and(|s| s.failed)
                    })
                    .await;
                    let status = checker.status(id).expect("known");
                    assert!(status.consecutive_lost > MAX_CONSECUTIVE_LOST, "{status:?}");
                    assert_eq!((status.latency, status.last_rtt), (None, None));
                }
                // The live ones kept answering all along.
                for t in &live {
                    let status = checker.status(&t.key).expect("known");
                    assert!(!status.failed, "{status:?}");
                }

                // Removing targets forgets them; unchanged ones keep their statistics.
                checker.set_targets(vec![live[0].clone()]);
                assert_eq!(checker.status(&k("dark4")), None);
                assert_eq!(checker.status(&k("lo6")), None);
                assert!(checker
                    .status(&k("lo4"))
                    .is_some_and(|s| s.latency.is_some()));

                // Re-pointing a target at a dark address starts afresh and then fails.
                checker.set_targets(vec![target("lo4", "192.0.2.3", "192.0.2.1")]);
                assert!(checker
                    .status(&k("lo4"))
                    .is_none_or(|s| s.latency.is_none()));
                wait_for("lo4 re-pointed to fail", || {
                    checker.status(&k("lo4")).is_some_and(|s| s.failed)
                })
                .await;

                let _ = stop.send(());
                tokio::time::timeout(Duration::from_secs(5), run)
                    .await
                    .expect("run stops on shutdown")
                    .expect("run does not panic");
            },
        );
    }
    #[test]
    fn unprivileged_ping_sockets_work_too() {
        in_netns(
            "health::unprivileged_ping_sockets_work_too",
            |_nl| async move {
                // A new namespace allows ping sockets to no group; allow root's. This write goes
                // to this thread's namespace: /proc/sys/net follows the opener's.
                std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0")
                    .expect("allow ping sockets in the namespace");
                for (dst, ident) in [("127.0.0.1", 7), ("::1", 8)] {
                    let dst: IpAddr = dst.parse().expect("dst");
                    let socket =
                        EchoSocket::open(dst, Some(dst), false).expect("open a ping socket");
                    assert!(!socket.raw, "{dst}: a ping socket was asked for");
                    socket.send(ident, 41).await.expect("send a probe");
                    let mut buf = [0u8; 512];
                    let seq = tokio::time::timeout(Duration::from_secs(5), async {
                        loop {
                            if let Some(seq) = socket.recv(&mut buf, ident).await.expect("recv") {
                                break seq;
                            }
                        }
                    })
                    .await
                    .expect("an echo reply in time");
                    assert_eq!(seq, 41, "{dst}");
                }
            },
        );
    }
}
