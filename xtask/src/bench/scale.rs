//! Cases 1 to 3: cold sync, incremental changes and status poll at 1,000 clusters, by the
//! `scale` bench binary of wgcable-engine run inside a namespace built here.

use std::path::Path;

use anyhow::Result;

use super::*;
use crate::cmd::{cmd, read};
use crate::topology::Topology;

/// `backend`: extra arguments of the bench binary (`--backend kernel`, or none for userspace).
pub(super) fn scale_run(
    topo: &Topology,
    exe: &Path,
    backend: &[&str],
    samples: &mut Samples,
) -> Result<()> {
    let ns = &topo.clusters[0].gw_ns;
    let mut c = cmd(
        "ip",
        [
            "netns".as_ref(),
            "exec".as_ref(),
            ns.as_ref(),
            exe.as_os_str(),
            "--in-namespace".as_ref(),
            "--peers".as_ref(),
            PEERS.to_string().as_ref(),
        ],
    );
    c.args(backend);
    let out = read(&mut c)?;
    for line in out.lines() {
        match parse_result(line) {
            Some((name, value)) => push(samples, name, value),
            None => println!("{line}"),
        }
    }
    Ok(())
}

/// `RESULT name value` lines of the scale bench.
pub(super) fn parse_result(line: &str) -> Option<(&str, f64)> {
    let mut parts = line.strip_prefix("RESULT ")?.split_whitespace();
    let name = parts.next()?;
    let value = parts.next()?.parse().ok()?;
    Some((name, value))
}
