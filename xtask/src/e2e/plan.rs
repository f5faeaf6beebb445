//! `wgcable plan` against a running gateway's host: nothing to change while all is well; a
//! route deleted by hand shows as the route to add; the plan itself changes nothing.

use anyhow::{ensure, Result};

use super::*;
use crate::cmd::{self, read};
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
    cmd::run(&mut topo.ip(0, ["route", "del", &remote, "table", &table]))?;
    let drifted = plan(topo)?;
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
    // The plan changed nothing: the route is back only through the gateway's own resync.
    let routes = state::routes(topo, 0)?;
    let repaired_by_plan = routes.contains(&remote);
    wait_mesh(topo, WAIT)?;
    Ok(format!(
        "`wgcable plan` on gateway a: \"nothing to change\" when converged; after `ip route del {remote}`: \
         exactly `{}`; the route {} right after the plan ran (the gateway's resync repairs it)",
        drifted.trim(),
        if repaired_by_plan { "was already back (resync)" } else { "was still missing" }
    ))
}
