//! `wgcable plan` against a running gateway's host: nothing to change while all is well; a
//! route deleted by hand shows as the route to add; the plan itself changes nothing.

use std::time::Instant;

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::{self, poll, read};
use crate::state;
use crate::topology::{Family, Topology, TABLE};

pub(super) fn run(topo: &mut Topology) -> Result<String> {
    ensure_mesh(topo)?;
    let plan = |topo: &Topology| -> Result<String> {
        let args = topo.gateway_command(0, "plan");
        read(&mut topo.gw(0, &topo.gateway_bin, &args))
    };
    let converged = plan(topo)?;
    ensure!(
        converged.trim() == "nothing to change",
        "a converged host should need nothing; `wgcable plan` printed:\n{converged}"
    );

    let remote = remote_subnets_of(topo, 0, Family::V4)
        .into_iter()
        .next()
        .expect("a remote subnet");
    let table = TABLE.to_string();
    // Gateway a is frozen while the route is deleted and `wgcable plan` looks: its resync runs
    // every 2 s here, and one `wgcable plan` can take longer than that (under TCG in the VM it
    // does), so a running gateway would often repair the route before the plan saw it missing.
    let paused = topo.pause_gateway(0)?;
    cmd::run(&mut topo.ip(0, ["route", "del", &remote, "table", &table]))?;
    let started = Instant::now();
    let drifted = plan(topo)?;
    let took = started.elapsed();
    ensure!(
        drifted
            .lines()
            .any(|l| l.starts_with("add route ") && l.contains(&remote)),
        "the deleted route {remote} should be planned again; `wgcable plan` printed:\n{drifted}"
    );
    ensure!(
        drifted.lines().count() == 1,
        "only that route should be planned; `wgcable plan` printed:\n{drifted}"
    );
    // The plan changed nothing: with the gateway frozen, nobody else could have added it.
    ensure!(
        !state::routes(topo, 0)?.contains(&remote),
        "`wgcable plan` must change nothing, yet {remote} is back in table {TABLE}"
    );
    drop(paused);
    // The gateway's own resync repairs it once it runs again.
    let started = Instant::now();
    poll(
        "gateway a's resync to put the deleted route back",
        WAIT,
        || {
            ensure!(state::routes(topo, 0)?.contains(&remote), "still missing");
            Ok(())
        },
    )?;
    let repaired = started.elapsed();
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "`wgcable plan` on gateway a: \"nothing to change\" when converged; after `ip route del {remote}` \
         (gateway frozen): exactly `{}` in {:.2}s, the route still missing after the plan; the gateway's \
         resync put it back {:.2}s after it ran again",
        drifted.trim(),
        secs(took),
        secs(repaired)
    ))
}
