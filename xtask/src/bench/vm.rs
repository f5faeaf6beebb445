//! `cargo xtask bench --vm [ARGS]`: the kernel WireGuard cases, in the VM of `cargo xtask vm`
//! (Debian's kernel under TCG, since these machines' kernel has no WireGuard). Inside, the
//! gateway's `--backend auto` finds kernel WireGuard, so the same cases measure:
//! - case 1, cold sync of 1,000 clusters: the kernel backend against `wg setconf` + `ip -batch`
//!   on the same guest kernel;
//! - case 7, pod-to-pod throughput: kernel WireGuard (the gateways) against the hand-made
//!   wireguard-go tunnel of the twin topology, in the same VM.
//!
//! The release binaries are built here on the host first (the guest runs the host's files);
//! under TCG every figure is many times slower than on hardware: only ratios measured in the
//! same run mean something.

use std::time::Duration;

use anyhow::Result;

use super::{build_release_gateway, build_scale_bench};
use crate::topology;

/// A run of cases 1 and 7 under TCG takes minutes; this only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(40 * 60);

pub(crate) fn run(args: &[String]) -> Result<()> {
    build_release_gateway()?;
    build_scale_bench()?;
    let mut command = vec![
        topology::xtask_exe()?.to_string_lossy().into_owned(),
        "bench".to_owned(),
    ];
    if args.is_empty() {
        command.extend(["--case", "1,7", "--runs", "3"].map(String::from));
    } else {
        command.extend(args.iter().cloned());
    }
    crate::vm::run_in_vm("bench", command, TIMEOUT)
}
