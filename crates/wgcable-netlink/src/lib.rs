//! Reusable async link, address, route and rule operations over rtnetlink.
//!
//! This is the netlink layer of the workspace. It speaks the kernel's words only -
//! links, addresses, routes, rules, tables - so any cable driver (WireGuard, VXLAN,
//! IPsec, ...) can use it. It must NOT know about WireGuard peers or keys, Submariner,
//! endpoints or clusters; [`LinkKind::Wireguard`] is just a kind string to create.
//!
//! # Map
//! - [`Netlink`]: the trait every layer above codes against, with three implementations:
//!   [`RtNetlink`] (the kernel), `FakeNetlink` (an in-memory kernel) and `MockNetlink`
//!   (mockall), the last two behind the `testing` feature.
//! - Pure planning, no I/O: [`diff_routes`], [`diff_addrs`], [`Rule::matches`].
//! - Idempotent helpers over any [`Netlink`]: [`sync_routes`], [`ensure_link`],
//!   [`ensure_addrs`], [`ensure_rule`], and the underlay facts [`underlay_mtu`] and
//!   [`source_for`].
//! - [`Error`]: says what was being done, carries the OS error as its source, and answers
//!   [`is_unsupported`](Error::is_unsupported), [`is_not_found`](Error::is_not_found),
//!   [`is_exists`](Error::is_exists) and [`is_permission`](Error::is_permission).
//!
//! # Invariants
//! - No hidden runtime, no spawned task: [`RtNetlink::connect`] hands back the connection
//!   future for the caller to spawn, rtnetlink style.
//! - Route batches are pipelined (many requests in flight on one socket), so syncing
//!   thousands of routes costs a few round trips, not thousands.
//! - Rules are always "lookup table" rules with the action set (rtnetlink's default
//!   action, `FR_ACT_UNSPEC`, is accepted by the kernel but fails every lookup), and
//!   tables above 255 travel in `RTA_TABLE`/`FRA_TABLE`.
//! - Nothing owned by someone else is deleted silently: [`sync_routes`] only deletes
//!   routes through its own link and table, [`ensure_link`] refuses a link of the wrong
//!   kind instead of replacing it.
//!
//! # Example
//! ```no_run
//! use wgcable_netlink::{ensure_addrs, ensure_link, ensure_rule, sync_routes};
//! use wgcable_netlink::{IpFamily, LinkKind, Netlink, RouteSpec, RtNetlink, Rule};
//!
//! # async fn example() -> Result<(), wgcable_netlink::Error> {
//! let (nl, conn) = RtNetlink::connect()?;
//! tokio::spawn(conn);
//!
//! let (link, _created) = ensure_link(&nl, "cable0", &LinkKind::Dummy).await?;
//! nl.link_set_up(link.index, true).await?;
//! ensure_addrs(&nl, link.index, &["10.0.0.1/32".parse().expect("valid")]).await?;
//!
//! let routes = [RouteSpec {
//!     dst: "10.1.0.0/16".parse().expect("valid"),
//!     oif: link.index,
//!     table: 150,
//!     pref_src: Some("10.0.0.1".parse().expect("valid")),
//! }];
//! let applied = sync_routes(&nl, 150, link.index, &routes).await?;
//! println!("added {}, deleted {}", applied.to_add.len(), applied.to_del.len());
//!
//! let rule = Rule { priority: Some(100), ..Rule::lookup(IpFamily::V4, 150) };
//! ensure_rule(&nl, &rule).await?;
//! # Ok(())
//! # }
//! ```

use std::net::IpAddr;

use ipnet::IpNet;

#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod ensure;
mod error;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod plan;
mod rtnl;
/// Helpers for privileged tests (a fresh network namespace per test).
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use ensure::{ensure_addrs, ensure_link, ensure_rule, source_for, sync_routes, underlay_mtu};
pub use error::{Error, Op};
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeNetlink, Method};
pub use plan::{diff_addrs, diff_routes, AddrDiff, RouteDiff};
pub use rtnl::RtNetlink;
pub use types::{
    IpFamily, Link, LinkKind, Route, RouteLookup, RouteSpec, Rule, IFF_UP, MAX_LINK_NAME_LEN,
    RTPROT_STATIC, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN,
};

/// Link, address, route and rule operations: the seam between the kernel and every
/// layer above.
///
/// Implementations: [`RtNetlink`] (the kernel); behind the `testing` feature
/// `FakeNetlink` (in memory) and `MockNetlink` (mockall).
// automock must come before async_trait so that it sees the `async fn`s.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
#[async_trait::async_trait]
pub trait Netlink: Send + Sync {
    /// The link named `name`, or `None` if there is none.
    async fn link_get(&self, name: &str) -> Result<Option<Link>, Error>;
    /// The link with ifindex `index`, or `None` if there is none.
    async fn link_get_by_index(&self, index: u32) -> Result<Option<Link>, Error>;
    /// Every link of the network namespace.
    async fn link_list(&self) -> Result<Vec<Link>, Error>;
    /// Creates a link (down) and returns it; `EEXIST` if the name is taken.
    async fn link_add(&self, name: &str, kind: &LinkKind) -> Result<Link, Error>;
    /// Deletes a link (and a veth's peer); `ENODEV` if it does not exist.
    async fn link_del(&self, index: u32) -> Result<(), Error>;
    /// Sets a link administratively up or down.
    async fn link_set_up(&self, index: u32, up: bool) -> Result<(), Error>;
    /// Sets a link's MTU.
    async fn link_set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error>;
    /// The addresses of a link, both families, IPv6 link-local ones included.
    async fn addr_list(&self, index: u32) -> Result<Vec<IpNet>, Error>;
    /// Adds an address (`EEXIST` if present). IPv6 addresses skip duplicate address
    /// detection, so they are usable at once.
    async fn addr_add(&self, index: u32, addr: IpNet) -> Result<(), Error>;
    /// Removes an address (`EADDRNOTAVAIL` if absent).
    async fn addr_del(&self, index: u32, addr: IpNet) -> Result<(), Error>;
    /// The unicast routes of `table`, both families.
    async fn route_list(&self, table: u32) -> Result<Vec<Route>, Error>;
    /// Adds or replaces (`NLM_F_CREATE | NLM_F_REPLACE`) routes, pipelined. Every route is
    /// attempted; the first failure is returned.
    async fn route_add(&self, routes: &[RouteSpec]) -> Result<(), Error>;
    /// Deletes routes, pipelined; a route already gone is not an error. Every route is
    /// attempted; the first failure is returned.
    async fn route_del(&self, routes: &[Route]) -> Result<(), Error>;
    /// The "lookup table" rules of both families (other rules are left out).
    async fn rule_list(&self) -> Result<Vec<Rule>, Error>;
    /// Adds a rule; `EEXIST` if an identical one (same priority included) exists.
    async fn rule_add(&self, rule: &Rule) -> Result<(), Error>;
    /// Deletes the first rule that [`Rule::matches`] `rule`; `ENOENT` if there is none.
    async fn rule_del(&self, rule: &Rule) -> Result<(), Error>;
    /// What `ip route get DST` answers.
    async fn route_get(&self, dst: IpAddr) -> Result<RouteLookup, Error>;
}
