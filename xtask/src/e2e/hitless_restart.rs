//! 5. Restarting A keeps its key and device; a 10/s ping across the restart loses at most
//!    [`RESTART_LOSS_BOUND`] packets.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::*;
use crate::cmd::{poll, spawn};
use crate::state::{self};
use crate::topology::Topology;

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let key = state::public_key(topo, 0)?;
    let ifindex = state::device_ifindex(topo, 0)?;
    let dst = topo.clusters[1].pod_ip.to_string();

    let mut ping = spawn(
        topo.pod(0, "ping", ["-n", "-i", "0.1", "-W", "1", &dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let pid = Pid::from_raw(i32::try_from(ping.id()).context("pid out of range")?);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let stdout = ping.stdout.take().context("ping stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines
                    .lock()
                    .expect("no panics while holding the lock")
                    .push(line);
            }
        })
    };
    let replies = || {
        lines
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .filter(|l| l.contains("bytes from"))
            .count()
    };
    let result = (|| -> Result<(Duration, Duration)> {
        poll("10 ping replies before the restart", WAIT, || {
            ensure!(replies() >= 10, "{} replies so far", replies());
            Ok(())
        })?;
        let stop = topo.stop_gateway(0)?;
        let restart_at = Instant::now();
        topo.start_gateway(0)?;
        state::wait_connected(topo, 0, &topo.remotes(0), WAIT)?;
        let connected = restart_at.elapsed();
        // Two more seconds of replies after the new process took over.
        let seen = replies();
        poll("20 more ping replies after the restart", WAIT, || {
            ensure!(
                replies() >= seen + 20,
                "{} replies so far",
                replies() - seen
            );
            Ok(())
        })?;
        Ok((stop, connected))
    })();
    eprintln!("$ kill -INT {pid}   # ping");
    let _ = kill(pid, Signal::SIGINT);
    let _ = ping.wait();
    let _ = reader.join();
    let (stop, connected) = result?;
    let text = lines
        .lock()
        .expect("no panics while holding the lock")
        .join("\n");
    let (sent, received) = state::parse_ping(&text)?;
    let lost = sent.saturating_sub(received);

    let key_after = state::public_key(topo, 0)?;
    let ifindex_after = state::device_ifindex(topo, 0)?;
    ensure!(key_after == key, "the restart changed a's public key");
    ensure!(
        ifindex_after == ifindex,
        "the restart replaced the device (ifindex {ifindex} -> {ifindex_after})"
    );
    ensure!(
        lost <= RESTART_LOSS_BOUND,
        "{lost} of {sent} pings lost across the restart (bound {RESTART_LOSS_BOUND})"
    );
    Ok(format!(
        "pod-a -> pod-b ping at 10/s across a restart of gateway a (stopped in {:.2}s, connected again {:.2}s after \
         the new start): {sent} sent, {received} received, {lost} lost (bound {RESTART_LOSS_BOUND}); key and device \
         (ifindex {ifindex}) kept",
        secs(stop),
        secs(connected)
    ))
}
