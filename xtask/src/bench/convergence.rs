//! Case 4: convergence: fresh start to the first pod-to-pod ping, and a restart under a
//! 100/s ping.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::*;
use crate::cmd::spawn;
use crate::interrupt;
use crate::state;
use crate::topology::{Options, Topology};

/// A `ping -D` at 100/s from a pod, whose replies are read on a thread of their own.
pub(super) struct Pinger {
    child: std::process::Child,
    replies: mpsc::Receiver<SystemTime>,
}

impl Pinger {
    fn start(topo: &Topology, from: usize, dst: &str, deadline_secs: u32) -> Result<Pinger> {
        let mut child = spawn(
            topo.pod(
                from,
                "ping",
                // A count, not a deadline (-w): with -w, ping gives up at the first "network
                // unreachable" that the gateway answers before its tunnel is up.
                [
                    "-n",
                    "-D",
                    "-i",
                    "0.01",
                    "-c",
                    &(deadline_secs * 100).to_string(),
                    dst,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        )?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(at) = parse_reply_time(&line) {
                    if tx.send(at).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Pinger { child, replies })
    }

    /// The time of the first reply.
    fn first_reply(&self, timeout: Duration) -> Result<SystemTime> {
        let end = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            match self.replies.recv_timeout(Duration::from_millis(100)) {
                Ok(at) => return Ok(at),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {}
                Err(_) => bail!("no ping reply within {timeout:?}"),
            }
        }
    }

    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let _ = self.child.wait();
    }
}

/// The `[seconds.micros]` timestamp of a `ping -D` reply line.
pub(super) fn parse_reply_time(line: &str) -> Option<SystemTime> {
    if !line.contains("bytes from") {
        return None;
    }
    let stamp = line.strip_prefix('[')?.split_once(']')?.0;
    let secs: f64 = stamp.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// `gateway_args`: extra arguments of every gateway (`--backend kernel` in the VM).
pub(super) fn convergence(
    bin: &Path,
    gateway_args: &[String],
    runs: usize,
    samples: &mut Samples,
) -> Result<Topology> {
    let mut last = None;
    for r in 0..runs {
        interrupt::check()?;
        // A new topology each time: no key, no device, no routes to adopt. The previous one
        // goes first, so that only one pair of gateways runs at a time.
        drop(last.take());
        let mut topo = Topology::build(Options {
            clusters: 2,
            gateway_bin: bin.to_path_buf(),
            gateway_args: gateway_args.to_vec(),
            keep: false,
        })?;
        let dst = topo.clusters[1].pod_ip.to_string();
        let pinger = Pinger::start(&topo, 0, &dst, 60)?;
        let t0 = SystemTime::now();
        topo.start_gateway(0)?;
        topo.start_gateway(1)?;
        let first = pinger.first_reply(WAIT);
        pinger.stop();
        if first.is_err() {
            topo.print_log_tails(30);
        }
        let secs = first?.duration_since(t0).unwrap_or_default().as_secs_f64();
        println!(
            "run {} of {runs}: two fresh gateways to the first pod-a -> pod-b ping: {:.0} ms",
            r + 1,
            secs * 1000.0
        );
        push(samples, "converge.fresh", secs * 1000.0);
        last = Some(topo);
    }
    last.context("no convergence run")
}

/// Restarts gateway A with a 100/s ping running across it: the time until it is ready again,
/// and the pings lost.
pub(super) fn restarts(topo: &mut Topology, runs: usize, samples: &mut Samples) -> Result<()> {
    let dst = topo.clusters[1].pod_ip.to_string();
    for r in 0..runs {
        interrupt::check()?;
        let count = 400u32;
        let ping = spawn(
            topo.pod(
                0,
                "ping",
                [
                    "-n",
                    "-q",
                    "-i",
                    "0.01",
                    "-W",
                    "1",
                    "-c",
                    &count.to_string(),
                    &dst,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        )?;
        wait(Duration::from_millis(300))?;
        topo.stop_gateway(0)?;
        let t0 = Instant::now();
        topo.start_gateway(0)?;
        let ready = loop {
            interrupt::check()?;
            if state::http(topo, 0, "/readyz").is_ok() {
                break t0.elapsed();
            }
            ensure!(
                t0.elapsed() < WAIT,
                "gateway a not ready {WAIT:?} after a restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = ping.wait_with_output()?;
        let (sent, received) = state::parse_ping(&String::from_utf8_lossy(&out.stdout))?;
        println!(
            "restart {} of {runs}: gateway a ready again after {:.0} ms; {} of {sent} pings (100/s) lost across the restart",
            r + 1,
            ready.as_secs_f64() * 1000.0,
            sent - received
        );
        push(
            samples,
            "converge.restart_ready",
            ready.as_secs_f64() * 1000.0,
        );
        push(samples, "converge.restart_lost", (sent - received) as f64);
    }
    Ok(())
}
