//! `cargo xtask bench --vm [ARGS]`: the kernel WireGuard cases, in the VM of `cargo xtask vm`
//! (Debian's kernel under TCG, since these machines' kernel has no WireGuard). Inside, the
//! bench runs with `--backend kernel` (the scale bench's device and every gateway on kernel
//! WireGuard, never a fallback), so by default (5 runs):
//! - case 1, cold sync of 1,000 clusters: the kernel backend against `ip link add type
//!   wireguard` + `wg setconf` + `ip -batch` on the same guest kernel (cases 2 and 3 come with
//!   it: the scale bench measures all three);
//! - case 7, pod-to-pod throughput: kernel WireGuard (the gateways) against the hand-made
//!   wireguard-go tunnel of the twin topology, in the same VM.
//!
//! The release binaries are built here on the host first (the guest runs the host's files);
//! under TCG every figure is many times slower than on hardware: only ratios measured in the
//! same run mean something.

use std::time::Duration;

use anyhow::Result;

use super::{build_release_gateway, build_scale_bench, PREBUILT_GATEWAY, PREBUILT_SCALE};
use crate::topology;

/// A run of cases 1 and 7 under TCG takes minutes; this only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(40 * 60);

pub(crate) fn run(args: &[String]) -> Result<()> {
    let gateway = build_release_gateway()?;
    let scale = build_scale_bench()?;
    let mut command = vec![
        topology::xtask_exe()?.to_string_lossy().into_owned(),
        "bench".to_owned(),
    ];
    // Explicitly kernel: the scale bench and every gateway on kernel WireGuard, so a run can
    // never quietly measure a fallback to wireguard-go.
    if !args.iter().any(|a| a == "--backend") {
        command.extend(["--backend", "kernel"].map(String::from));
    }
    if args.is_empty() {
        command.extend(["--case", "1,7", "--runs", "5"].map(String::from));
    } else {
        command.extend(args.iter().cloned());
    }
    // The guest runs the host's binaries as they are: cargo there would rebuild everything.
    let env = vec![
        (
            PREBUILT_GATEWAY.to_owned(),
            gateway.to_string_lossy().into_owned(),
        ),
        (
            PREBUILT_SCALE.to_owned(),
            scale.to_string_lossy().into_owned(),
        ),
    ];
    crate::vm::run_in_vm("bench", command, env, TIMEOUT)
}
