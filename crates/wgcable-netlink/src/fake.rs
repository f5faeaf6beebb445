//! [`FakeNetlink`]: an in-memory kernel for tests of the layers above.
//!
//! It keeps links, addresses, routes per table and rules, and answers like Linux does for
//! the cases callers must handle: `EEXIST` for duplicates, `ENODEV`/`ENOENT`/
//! `EADDRNOTAVAIL` for missing objects, `EOPNOTSUPP` for WireGuard on a kernel without the
//! module. Deliberate simplifications are listed on [`FakeNetlink`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use crate::error::{Error, Op};
use crate::types::{
    link_name_problem, IpFamily, Link, LinkKind, Route, RouteLookup, RouteSpec, Rule, IFF_UP,
    TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN,
};
use crate::Netlink;

const IFF_BROADCAST: u32 = libc::IFF_BROADCAST as u32;
const IFF_MULTICAST: u32 = libc::IFF_MULTICAST as u32;
const IFF_LOOPBACK: u32 = libc::IFF_LOOPBACK as u32;
const IFF_POINTOPOINT: u32 = libc::IFF_POINTOPOINT as u32;
const IFF_NOARP: u32 = libc::IFF_NOARP as u32;

/// A method of the [`Netlink`] trait, to count calls or inject failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Method {
    LinkGet,
    LinkGetByIndex,
    LinkList,
    LinkAdd,
    LinkDel,
    LinkSetUp,
    LinkSetMtu,
    AddrList,
    AddrAdd,
    AddrDel,
    RouteList,
    RouteAdd,
    RouteDel,
    RuleList,
    RuleAdd,
    RuleDel,
    RouteGet,
}

impl Method {
    /// The trait method's name, which also starts its entries in [`FakeNetlink::ops`].
    pub fn as_str(self) -> &'static str {
        match self {
            Method::LinkGet => "link_get",
            Method::LinkGetByIndex => "link_get_by_index",
            Method::LinkList => "link_list",
            Method::LinkAdd => "link_add",
            Method::LinkDel => "link_del",
            Method::LinkSetUp => "link_set_up",
            Method::LinkSetMtu => "link_set_mtu",
            Method::AddrList => "addr_list",
            Method::AddrAdd => "addr_add",
            Method::AddrDel => "addr_del",
            Method::RouteList => "route_list",
            Method::RouteAdd => "route_add",
            Method::RouteDel => "route_del",
            Method::RuleList => "rule_list",
            Method::RuleAdd => "rule_add",
            Method::RuleDel => "rule_del",
            Method::RouteGet => "route_get",
        }
    }

    /// Whether the method changes kernel state.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Method::LinkGet
                | Method::LinkGetByIndex
                | Method::LinkList
                | Method::AddrList
                | Method::RouteList
                | Method::RuleList
                | Method::RouteGet
        )
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
struct FakeLink {
    link: Link,
    addrs: Vec<IpNet>,
    /// The other end of a veth pair, deleted with this one.
    peer: Option<u32>,
}

#[derive(Debug)]
struct State {
    links: BTreeMap<u32, FakeLink>,
    next_index: u32,
    /// Routes per table, in insertion order.
    routes: BTreeMap<u32, Vec<Route>>,
    /// Rules of both families, sorted by priority (stable: equal priorities keep the
    /// order they were added in, like the kernel).
    rules: Vec<Rule>,
    wireguard_supported: bool,
    ops: Vec<(Method, String)>,
    failures: HashMap<Method, VecDeque<i32>>,
}

/// An in-memory kernel implementing [`Netlink`], for unit tests without root.
///
/// It starts like a fresh network namespace: `lo` (index 1, up, `127.0.0.1/8` and
/// `::1/128`) and the default rules (`0: lookup local`, `32766: lookup main`, and for
/// IPv4 `32767: lookup default`).
///
/// Faithful where callers branch on it: duplicate links/addresses/rules fail with
/// `EEXIST`, missing ones with `ENODEV`/`EADDRNOTAVAIL`/`ENOENT`; a rule without priority
/// gets one below the first non-zero priority like Linux does; deleting a veth deletes its
/// peer; deleting a link or setting it down removes its routes in every table, and setting
/// it down also drops its IPv6 addresses; IPv4 routes through a down link fail with
/// `ENETDOWN`; a route's `pref_src` must be an address of some link (`EINVAL`).
///
/// Simplified: addresses do not create connected or local routes in the tables (they only
/// feed [`route_get`](Netlink::route_get)); `route_get` is a longest-prefix match over
/// the subnets of up links' addresses and the main table's routes through up links (a
/// subnet wins a tie), without rules, local delivery or gateway resolution; its source is
/// the route's `pref_src`, else the first address of the link in the family; no match is
/// `ENETUNREACH`. IPv6 link-local addresses are not generated.
pub struct FakeNetlink {
    state: Mutex<State>,
}

impl fmt::Debug for FakeNetlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeNetlink")
            .field("state", &*self.lock())
            .finish()
    }
}

impl Default for FakeNetlink {
    fn default() -> Self {
        FakeNetlink::new()
    }
}

fn net(s: &str) -> IpNet {
    s.parse().expect("constant prefix is valid")
}

impl FakeNetlink {
    /// A fake kernel in the state of a fresh network namespace, with WireGuard support.
    pub fn new() -> FakeNetlink {
        let lo = FakeLink {
            link: Link {
                index: 1,
                name: "lo".to_owned(),
                kind: None,
                mtu: 65536,
                up: true,
                flags: IFF_UP | IFF_LOOPBACK,
            },
            addrs: vec![net("127.0.0.1/8"), net("::1/128")],
            peer: None,
        };
        let rule = |family, priority, table| Rule {
            priority: Some(priority),
            ..Rule::lookup(family, table)
        };
        let rules = vec![
            rule(IpFamily::V4, 0, TABLE_LOCAL),
            rule(IpFamily::V6, 0, TABLE_LOCAL),
            rule(IpFamily::V4, 32766, TABLE_MAIN),
            rule(IpFamily::V6, 32766, TABLE_MAIN),
            rule(IpFamily::V4, 32767, TABLE_DEFAULT),
        ];
        FakeNetlink {
            state: Mutex::new(State {
                links: BTreeMap::from([(1, lo)]),
                next_index: 2,
                routes: BTreeMap::new(),
                rules,
                wireguard_supported: true,
                ops: Vec::new(),
                failures: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others' assertions.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When `false`, creating a WireGuard link fails with `EOPNOTSUPP`, like a kernel
    /// without the module.
    pub fn set_wireguard_supported(&self, supported: bool) {
        self.lock().wireguard_supported = supported;
    }

    /// Makes the next call of `method` fail with `errno`, changing nothing. Several calls
    /// queue up failures for successive calls.
    pub fn fail_next(&self, method: Method, errno: i32) {
        self.lock()
            .failures
            .entry(method)
            .or_default()
            .push_back(errno);
    }

    /// All links, by index.
    pub fn links(&self) -> Vec<Link> {
        self.lock().links.values().map(|l| l.link.clone()).collect()
    }

    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.lock()
            .links
            .values()
            .find(|l| l.link.name == name)
            .map(|l| l.link.clone())
    }

    /// The addresses of link `index` (empty for a missing link).
    pub fn addrs(&self, index: u32) -> Vec<IpNet> {
        self.lock()
            .links
            .get(&index)
            .map(|l| l.addrs.clone())
            .unwrap_or_default()
    }

    /// The routes of `table`, in the order they were added.
    pub fn routes(&self, table: u32) -> Vec<Route> {
        self.lock().routes.get(&table).cloned().unwrap_or_default()
    }

    /// All rules of both families, by priority.
    pub fn rules(&self) -> Vec<Rule> {
        self.lock().rules.clone()
    }

    /// Every call made so far, one entry per call: the method name, then its arguments
    /// (`"route_add 10.1.0.0/16 dev 2 table 150"`). Batches list each route, `; `-separated.
    pub fn ops(&self) -> Vec<String> {
        self.lock().ops.iter().map(|(_, s)| s.clone()).collect()
    }

    /// The calls that change state (see [`Method::is_write`]).
    pub fn writes(&self) -> Vec<String> {
        self.lock()
            .ops
            .iter()
            .filter(|(m, _)| m.is_write())
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: Method) -> usize {
        self.lock().ops.iter().filter(|(m, _)| *m == method).count()
    }

    /// Forgets the recorded calls.
    pub fn clear_ops(&self) {
        self.lock().ops.clear();
    }

    /// Records a call and takes an injected failure for it, if one is queued.
    fn begin(
        &self,
        method: Method,
        args: String,
        op: impl FnOnce() -> Op,
    ) -> Result<MutexGuard<'_, State>, Error> {
        let mut state = self.lock();
        let entry = if args.is_empty() {
            method.as_str().to_owned()
        } else {
            format!("{method} {args}")
        };
        state.ops.push((method, entry));
        if let Some(errno) = state
            .failures
            .get_mut(&method)
            .and_then(VecDeque::pop_front)
        {
            return Err(Error::from_errno(op(), errno));
        }
        Ok(state)
    }
}

impl State {
    fn link_mut(&mut self, index: u32, op: impl FnOnce() -> Op) -> Result<&mut FakeLink, Error> {
        self.links
            .get_mut(&index)
            .ok_or_else(|| Error::from_errno(op(), libc::ENODEV))
    }

    fn by_name(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|l| l.link.name == name)
    }

    fn is_local(&self, addr: IpAddr) -> bool {
        self.links
            .values()
            .any(|l| l.addrs.iter().any(|a| a.addr() == addr))
    }

    fn drop_routes_of(&mut self, index: u32) {
        for routes in self.routes.values_mut() {
            routes.retain(|r| r.oif != Some(index));
        }
    }

    fn new_link(&mut self, name: &str, kind: &str, mtu: u32, flags: u32, peer: Option<u32>) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        let link = Link {
            index,
            name: name.to_owned(),
            kind: Some(kind.to_owned()),
            mtu,
            up: false,
            flags,
        };
        self.links.insert(
            index,
            FakeLink {
                link,
                addrs: Vec::new(),
                peer,
            },
        );
        index
    }

    /// The priority Linux gives a rule added without one: one less than the priority of
    /// the second rule of the family, if that is not 0 (so 32765, then 32764, ...).
    fn default_priority(&self, family: IpFamily) -> u32 {
        self.rules
            .iter()
            .filter(|r| r.family == family)
            .nth(1)
            .and_then(|r| r.priority)
            .filter(|p| *p != 0)
            .map_or(0, |p| p - 1)
    }

    fn source_on(&self, index: u32, family: IpFamily) -> Option<IpAddr> {
        self.links
            .get(&index)?
            .addrs
            .iter()
            .map(|a| a.addr())
            .find(|a| IpFamily::of(*a) == family)
    }
}

fn describe_spec(spec: &RouteSpec) -> String {
    let mut s = format!("{} dev {} table {}", spec.dst, spec.oif, spec.table);
    if let Some(src) = spec.pref_src {
        s.push_str(&format!(" src {src}"));
    }
    s
}

fn describe_route(route: &Route) -> String {
    let mut s = route.dst.to_string();
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev {oif}"));
    }
    s.push_str(&format!(" table {}", route.table));
    s
}

#[async_trait::async_trait]
impl Netlink for FakeNetlink {
    async fn link_get(&self, name: &str) -> Result<Option<Link>, Error> {
        let op = || Op::LinkGet {
            name: name.to_owned(),
        };
        let state = self.begin(Method::LinkGet, name.to_owned(), op)?;
        if let Some(reason) = link_name_problem(name) {
            return Err(Error::InvalidInput {
                op: op(),
                reason: reason.to_owned(),
            });
        }
        Ok(state.by_name(name).map(|l| l.link.clone()))
    }

    async fn link_get_by_index(&self, index: u32) -> Result<Option<Link>, Error> {
        let state = self.begin(Method::LinkGetByIndex, index.to_string(), || {
            Op::LinkGetByIndex { index }
        })?;
        Ok(state.links.get(&index).map(|l| l.link.clone()))
    }

    async fn link_list(&self) -> Result<Vec<Link>, Error> {
        let state = self.begin(Method::LinkList, String::new(), || Op::LinkList)?;
        Ok(state.links.values().map(|l| l.link.clone()).collect())
    }

    async fn link_add(&self, name: &str, kind: &LinkKind) -> Result<Link, Error> {
        let op = || Op::LinkAdd {
            name: name.to_owned(),
            kind: kind.as_str().to_owned(),
        };
        let mut state = self.begin(Method::LinkAdd, format!("{name} {kind}"), op)?;
        if let Some(reason) = link_name_problem(name) {
            return Err(Error::InvalidInput {
                op: op(),
                reason: reason.to_owned(),
            });
        }
        if state.by_name(name).is_some() {
            return Err(Error::from_errno(op(), libc::EEXIST));
        }
        let ether = IFF_BROADCAST | IFF_MULTICAST;
        let index = match kind {
            LinkKind::Wireguard => {
                if !state.wireguard_supported {
                    return Err(Error::from_errno(op(), libc::EOPNOTSUPP));
                }
                state.new_link(name, "wireguard", 1420, IFF_POINTOPOINT | IFF_NOARP, None)
            }
            LinkKind::Dummy => state.new_link(name, "dummy", 1500, ether, None),
            LinkKind::Veth { peer } => {
                if let Some(reason) = link_name_problem(peer) {
                    return Err(Error::InvalidInput {
                        op: op(),
                        reason: format!("veth peer {peer:?}: {reason}"),
                    });
                }
                if peer == name || state.by_name(peer).is_some() {
                    return Err(Error::from_errno(op(), libc::EEXIST));
                }
                let index = state.new_link(name, "veth", 1500, ether, None);
                let peer_index = state.new_link(peer, "veth", 1500, ether, Some(index));
                state.link_mut(index, op)?.peer = Some(peer_index);
                index
            }
            LinkKind::Vxlan { dev, .. } => {
                if let Some(dev) = dev {
                    state.link_mut(*dev, op)?;
                }
                state.new_link(name, "vxlan", 1450, ether, None)
            }
            LinkKind::Other(kind) => state.new_link(name, kind, 1500, ether, None),
        };
        Ok(state.link_mut(index, op)?.link.clone())
    }

    async fn link_del(&self, index: u32) -> Result<(), Error> {
        let op = || Op::LinkDel { index };
        let mut state = self.begin(Method::LinkDel, index.to_string(), op)?;
        let link = state
            .links
            .remove(&index)
            .ok_or_else(|| Error::from_errno(op(), libc::ENODEV))?;
        state.drop_routes_of(index);
        if let Some(peer) = link.peer {
            state.links.remove(&peer);
            state.drop_routes_of(peer);
        }
        Ok(())
    }

    async fn link_set_up(&self, index: u32, up: bool) -> Result<(), Error> {
        let op = || Op::LinkSetUp { index, up };
        let state_word = if up { "up" } else { "down" };
        let mut state = self.begin(Method::LinkSetUp, format!("{index} {state_word}"), op)?;
        let link = state.link_mut(index, op)?;
        let was_up = link.link.up;
        link.link.up = up;
        if up {
            link.link.flags |= IFF_UP;
        } else {
            link.link.flags &= !IFF_UP;
        }
        if was_up && !up {
            // Linux flushes the routes through a link that goes down, and its IPv6
            // addresses (keep_addr_on_down is off by default).
            link.addrs.retain(|a| IpFamily::of_net(a) == IpFamily::V4);
            state.drop_routes_of(index);
        }
        Ok(())
    }

    async fn link_set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let op = || Op::LinkSetMtu { index, mtu };
        let mut state = self.begin(Method::LinkSetMtu, format!("{index} {mtu}"), op)?;
        let link = state.link_mut(index, op)?;
        // ETH_MIN_MTU .. ETH_MAX_MTU, the bounds of the virtual links this crate creates.
        if !(68..=65535).contains(&mtu) {
            return Err(Error::from_errno(op(), libc::EINVAL));
        }
        link.link.mtu = mtu;
        Ok(())
    }

    async fn addr_list(&self, index: u32) -> Result<Vec<IpNet>, Error> {
        let op = || Op::AddrList { index };
        let state = self.begin(Method::AddrList, index.to_string(), op)?;
        // The kernel answers a dump for a missing link with nothing, not an error.
        Ok(state
            .links
            .get(&index)
            .map(|l| l.addrs.clone())
            .unwrap_or_default())
    }

    async fn addr_add(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let op = || Op::AddrAdd { index, addr };
        let mut state = self.begin(Method::AddrAdd, format!("{addr} dev {index}"), op)?;
        let link = state.link_mut(index, op)?;
        // IPv4 allows one address with several prefix lengths; IPv6 addresses are unique.
        let exists = link.addrs.iter().any(|a| match addr {
            IpNet::V4(_) => *a == addr,
            IpNet::V6(_) => a.addr() == addr.addr(),
        });
        if exists {
            return Err(Error::from_errno(op(), libc::EEXIST));
        }
        link.addrs.push(addr);
        Ok(())
    }

    async fn addr_del(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let op = || Op::AddrDel { index, addr };
        let mut state = self.begin(Method::AddrDel, format!("{addr} dev {index}"), op)?;
        let link = state.link_mut(index, op)?;
        let before = link.addrs.len();
        link.addrs.retain(|a| *a != addr);
        if link.addrs.len() == before {
            return Err(Error::from_errno(op(), libc::EADDRNOTAVAIL));
        }
        Ok(())
    }

    async fn route_list(&self, table: u32) -> Result<Vec<Route>, Error> {
        let state = self.begin(Method::RouteList, table.to_string(), || Op::RouteList {
            table,
        })?;
        Ok(state.routes.get(&table).cloned().unwrap_or_default())
    }

    async fn route_add(&self, routes: &[RouteSpec]) -> Result<(), Error> {
        let args = routes
            .iter()
            .map(describe_spec)
            .collect::<Vec<_>>()
            .join("; ");
        let first = routes.first();
        let mut state = self.begin(Method::RouteAdd, args, || Op::RouteAdd {
            dst: first.map_or_else(|| IpFamily::V4.any(), |s| s.dst),
            table: first.map_or(0, |s| s.table),
            oif: first.map_or(0, |s| s.oif),
        })?;
        // Like the pipelined kernel version: every route is tried, the first error wins.
        let mut first_error = None;
        for spec in routes {
            let op = || Op::RouteAdd {
                dst: spec.dst,
                table: spec.table,
                oif: spec.oif,
            };
            let family = IpFamily::of_net(&spec.dst);
            let result = (|| {
                let link = state
                    .links
                    .get(&spec.oif)
                    .ok_or_else(|| Error::from_errno(op(), libc::ENODEV))?;
                if family == IpFamily::V4 && !link.link.up {
                    return Err(Error::from_errno(op(), libc::ENETDOWN));
                }
                if let Some(src) = spec.pref_src {
                    if IpFamily::of(src) != family {
                        return Err(Error::InvalidInput {
                            op: op(),
                            reason: format!(
                                "the source {src} is not of the family of the destination"
                            ),
                        });
                    }
                    if !state.is_local(src) {
                        return Err(Error::from_errno(op(), libc::EINVAL));
                    }
                }
                let table = if spec.table == 0 {
                    TABLE_MAIN
                } else {
                    spec.table
                };
                let route = RouteSpec {
                    table,
                    ..spec.clone()
                }
                .installed();
                let routes = state.routes.entry(table).or_default();
                // NLM_F_REPLACE: the first route to the same prefix is replaced in place.
                match routes.iter_mut().find(|r| r.dst == route.dst) {
                    Some(existing) => *existing = route,
                    None => routes.push(route),
                }
                Ok(())
            })();
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn route_del(&self, routes: &[Route]) -> Result<(), Error> {
        let args = routes
            .iter()
            .map(describe_route)
            .collect::<Vec<_>>()
            .join("; ");
        let first = routes.first();
        let mut state = self.begin(Method::RouteDel, args, || Op::RouteDel {
            dst: first.map_or_else(|| IpFamily::V4.any(), |r| r.dst),
            table: first.map_or(0, |r| r.table),
        })?;
        for route in routes {
            if let Some(table) = state.routes.get_mut(&route.table) {
                // Already gone is fine: that is the goal.
                if let Some(pos) = table.iter().position(|r| {
                    r.dst == route.dst.trunc()
                        && (route.oif.is_none() || r.oif == route.oif)
                        && (route.gateway.is_none() || r.gateway == route.gateway)
                }) {
                    table.remove(pos);
                }
            }
        }
        Ok(())
    }

    async fn rule_list(&self) -> Result<Vec<Rule>, Error> {
        let state = self.begin(Method::RuleList, String::new(), || Op::RuleList)?;
        Ok(state.rules.clone())
    }

    async fn rule_add(&self, rule: &Rule) -> Result<(), Error> {
        let op = || Op::RuleAdd { rule: rule.clone() };
        let mut state = self.begin(Method::RuleAdd, rule.to_string(), op)?;
        if let Some(reason) = rule.invalid_reason() {
            return Err(Error::InvalidInput { op: op(), reason });
        }
        let mut stored = rule.normalized();
        if stored.priority.is_none() {
            stored.priority = Some(state.default_priority(rule.family));
        }
        if state.rules.contains(&stored) {
            return Err(Error::from_errno(op(), libc::EEXIST));
        }
        let priority = stored.priority;
        let pos = state
            .rules
            .iter()
            .position(|r| r.priority > priority)
            .unwrap_or(state.rules.len());
        state.rules.insert(pos, stored);
        Ok(())
    }

    async fn rule_del(&self, rule: &Rule) -> Result<(), Error> {
        let op = || Op::RuleDel { rule: rule.clone() };
        let mut state = self.begin(Method::RuleDel, rule.to_string(), op)?;
        if let Some(reason) = rule.invalid_reason() {
            return Err(Error::InvalidInput { op: op(), reason });
        }
        let pos = state
            .rules
            .iter()
            .position(|r| rule.matches(r))
            .ok_or_else(|| Error::from_errno(op(), libc::ENOENT))?;
        state.rules.remove(pos);
        Ok(())
    }

    async fn route_get(&self, dst: IpAddr) -> Result<RouteLookup, Error> {
        let op = || Op::RouteGet { dst };
        let state = self.begin(Method::RouteGet, dst.to_string(), op)?;
        let family = IpFamily::of(dst);
        // Policy routing first, as the kernel does: rules of this family ahead of the main
        // table's (priority 32766), in priority order, each looking up its table (longest
        // prefix through a link that is up). Only selectors a plain lookup can meet count: a
        // destination prefix; a rule with a source, a mark or `not` never matches it.
        // (Found by the netlink contract: the fake used to ignore rules.)
        let mut rules: Vec<&Rule> = state
            .rules
            .iter()
            .filter(|r| r.family == family && r.priority.unwrap_or(0) < 32766)
            .filter(|r| r.src.is_none() && r.fwmark.is_none() && !r.invert)
            .filter(|r| r.dst.is_none_or(|d| d.contains(&dst)))
            .collect();
        rules.sort_by_key(|r| r.priority.unwrap_or(0));
        for rule in rules.into_iter().filter(|r| r.table != TABLE_MAIN) {
            let found = state
                .routes
                .get(&rule.table)
                .into_iter()
                .flatten()
                .filter(|r| r.dst.contains(&dst))
                .filter_map(|r| {
                    let oif = r.oif?;
                    state
                        .links
                        .get(&oif)
                        .is_some_and(|l| l.link.up)
                        .then_some((r, oif))
                })
                .max_by_key(|(r, _)| r.dst.prefix_len());
            if let Some((route, oif)) = found {
                return Ok(RouteLookup {
                    oif,
                    pref_src: route.pref_src.or_else(|| state.source_on(oif, family)),
                    gateway: route.gateway,
                });
            }
        }
        // (prefix length, is a subnet, lookup): the longest prefix wins, a subnet a tie.
        let mut best: Option<(u8, bool, RouteLookup)> = None;
        let mut consider = |len: u8, subnet: bool, lookup: RouteLookup| {
            if best
                .as_ref()
                .is_none_or(|(l, s, _)| (len, subnet) > (*l, *s))
            {
                best = Some((len, subnet, lookup));
            }
        };
        for link in state.links.values().filter(|l| l.link.up) {
            for addr in link.addrs.iter().filter(|a| a.contains(&dst)) {
                consider(
                    addr.prefix_len(),
                    true,
                    RouteLookup {
                        oif: link.link.index,
                        pref_src: Some(addr.addr()),
                        gateway: None,
                    },
                );
            }
        }
        for route in state.routes.get(&TABLE_MAIN).into_iter().flatten() {
            let Some(oif) = route.oif else { continue };
            let up = state.links.get(&oif).is_some_and(|l| l.link.up);
            if up && route.dst.contains(&dst) {
                consider(
                    route.dst.prefix_len(),
                    false,
                    RouteLookup {
                        oif,
                        pref_src: route.pref_src.or_else(|| state.source_on(oif, family)),
                        gateway: route.gateway,
                    },
                );
            }
        }
        best.map(|(_, _, lookup)| lookup)
            .ok_or_else(|| Error::from_errno(op(), libc::ENETUNREACH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ensure_addrs, ensure_link, ensure_rule, source_for, sync_routes, underlay_mtu};

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    async fn dummy_up(nl: &FakeNetlink, name: &str) -> Link {
        let link = nl
            .link_add(name, &LinkKind::Dummy)
            .await
            .expect("add dummy");
        nl.link_set_up(link.index, true).await.expect("set up");
        link
    }

    #[tokio::test]
    async fn starts_like_a_fresh_namespace() {
        let nl = FakeNetlink::new();
        let lo = nl.link_get("lo").await.expect("get").expect("lo exists");
        assert_eq!((lo.index, lo.up, lo.kind), (1, true, None));
        let rules = nl.rule_list().await.expect("rules");
        assert_eq!(rules.len(), 5);
        assert!(rules.iter().all(|r| r.priority.is_some()));
    }

    #[tokio::test]
    async fn links_lifecycle() {
        let nl = FakeNetlink::new();
        let veth = nl
            .link_add(
                "veth-a",
                &LinkKind::Veth {
                    peer: "veth-b".to_owned(),
                },
            )
            .await
            .expect("add veth");
        assert_eq!(veth.kind.as_deref(), Some("veth"));
        assert!(!veth.up);
        let peer = nl
            .link_get("veth-b")
            .await
            .expect("get")
            .expect("peer exists");
        assert_ne!(peer.index, veth.index);

        let dup = nl
            .link_add("veth-b", &LinkKind::Dummy)
            .await
            .expect_err("duplicate name");
        assert!(dup.is_exists(), "{dup}");

        nl.link_set_mtu(veth.index, 1400).await.expect("mtu");
        nl.link_set_up(veth.index, true).await.expect("up");
        let got = nl
            .link_get_by_index(veth.index)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!((got.mtu, got.up, got.flags & IFF_UP), (1400, true, IFF_UP));
        assert!(nl.link_set_mtu(veth.index, 10).await.is_err());

        nl.link_del(veth.index).await.expect("del");
        assert_eq!(
            nl.link_get("veth-b").await.expect("get"),
            None,
            "peer goes too"
        );
        let gone = nl.link_del(veth.index).await.expect_err("already gone");
        assert!(gone.is_not_found(), "{gone}");
        let bad = nl
            .link_add("a-name-that-is-too-long", &LinkKind::Dummy)
            .await
            .expect_err("too long");
        assert!(matches!(bad, Error::InvalidInput { .. }), "{bad}");
    }

    #[tokio::test]
    async fn wireguard_support_can_be_switched_off() {
        let nl = FakeNetlink::new();
        nl.set_wireguard_supported(false);
        let err = nl
            .link_add("wg0", &LinkKind::Wireguard)
            .await
            .expect_err("unsupported");
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(
            err.to_string().split(" (").next(),
            Some("creating link wg0 of kind wireguard")
        );
        nl.set_wireguard_supported(true);
        let link = nl
            .link_add("wg0", &LinkKind::Wireguard)
            .await
            .expect("supported");
        assert_eq!(link.kind.as_deref(), Some("wireguard"));
    }

    #[tokio::test]
    async fn ensure_link_reuses_and_refuses_wrong_kind() {
        let nl = FakeNetlink::new();
        let (first, created) = ensure_link(&nl, "d0", &LinkKind::Dummy)
            .await
            .expect("create");
        assert!(created);
        let (again, created) = ensure_link(&nl, "d0", &LinkKind::Dummy)
            .await
            .expect("reuse");
        assert_eq!((again.index, created), (first.index, false));
        let err = ensure_link(&nl, "d0", &LinkKind::Wireguard)
            .await
            .expect_err("wrong kind");
        assert!(
            matches!(&err, Error::WrongKind { found, .. } if found == "dummy"),
            "{err}"
        );
        assert!(err.to_string().contains("d0"));
        assert!(nl.link("d0").is_some(), "never deleted silently");
    }

    #[tokio::test]
    async fn addrs_exist_and_missing_errors_and_ensure() {
        let nl = FakeNetlink::new();
        let link = dummy_up(&nl, "d0").await;
        nl.addr_add(link.index, net("10.0.0.1/24"))
            .await
            .expect("add");
        assert!(nl
            .addr_add(link.index, net("10.0.0.1/24"))
            .await
            .expect_err("dup")
            .is_exists());
        assert!(nl
            .addr_del(link.index, net("10.9.9.9/32"))
            .await
            .expect_err("missing")
            .is_not_found());
        assert!(nl
            .addr_add(99, net("10.0.0.2/24"))
            .await
            .expect_err("no link")
            .is_not_found());

        let desired = [net("10.0.0.1/32"), net("fd00::1/64")];
        let diff = ensure_addrs(&nl, link.index, &desired)
            .await
            .expect("ensure");
        assert_eq!(diff.to_del, vec![net("10.0.0.1/24")]);
        assert_eq!(diff.to_add, desired.to_vec());
        assert_eq!(nl.addrs(link.index), desired.to_vec());

        nl.clear_ops();
        assert!(ensure_addrs(&nl, link.index, &desired)
            .await
            .expect("again")
            .is_empty());
        assert!(nl.writes().is_empty(), "{:?}", nl.writes());

        // Going down drops the IPv6 address, like Linux.
        nl.link_set_up(link.index, false).await.expect("down");
        assert_eq!(nl.addrs(link.index), vec![net("10.0.0.1/32")]);
    }

    #[tokio::test]
    async fn sync_routes_applies_only_the_difference() {
        let nl = FakeNetlink::new();
        let a = dummy_up(&nl, "a").await;
        let b = dummy_up(&nl, "b").await;
        nl.addr_add(a.index, net("10.0.0.1/32"))
            .await
            .expect("addr");
        let other = RouteSpec {
            dst: net("172.16.0.0/16"),
            oif: b.index,
            table: 150,
            pref_src: None,
        };
        nl.route_add(std::slice::from_ref(&other))
            .await
            .expect("other link's route");

        let spec = |dst: &str| RouteSpec {
            dst: net(dst),
            oif: a.index,
            table: 150,
            pref_src: Some(ip("10.0.0.1")),
        };
        let desired: Vec<RouteSpec> = (0..100).map(|i| spec(&format!("10.{i}.0.0/16"))).collect();
        let diff = sync_routes(&nl, 150, a.index, &desired)
            .await
            .expect("sync");
        assert_eq!(diff.to_add.len(), 100);
        assert_eq!(
            nl.calls(Method::RouteAdd),
            2,
            "one batch for the 100 routes"
        );

        nl.clear_ops();
        let diff = sync_routes(&nl, 150, a.index, &desired)
            .await
            .expect("resync");
        assert!(diff.is_empty());
        assert!(nl.writes().is_empty(), "{:?}", nl.writes());

        let diff = sync_routes(&nl, 150, a.index, &desired[..10])
            .await
            .expect("shrink");
        assert_eq!((diff.to_add.len(), diff.to_del.len()), (0, 90));
        let left = nl.routes(150);
        assert_eq!(left.len(), 11);
        assert!(
            left.iter().any(|r| r.oif == Some(b.index)),
            "other link untouched"
        );

        let stray = RouteSpec {
            table: 151,
            ..spec("10.1.0.0/16")
        };
        let err = sync_routes(&nl, 150, a.index, &[stray])
            .await
            .expect_err("stray");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }

    #[tokio::test]
    async fn route_add_checks_like_the_kernel() {
        let nl = FakeNetlink::new();
        let down = nl.link_add("down0", &LinkKind::Dummy).await.expect("add");
        let v4 = RouteSpec {
            dst: net("10.1.0.0/16"),
            oif: down.index,
            table: 150,
            pref_src: None,
        };
        assert_eq!(
            nl.route_add(&[v4]).await.expect_err("down").errno(),
            Some(libc::ENETDOWN)
        );
        let v6 = RouteSpec {
            dst: net("fd00::/64"),
            oif: down.index,
            table: 150,
            pref_src: None,
        };
        nl.route_add(std::slice::from_ref(&v6))
            .await
            .expect("IPv6 accepts a down link");
        let bad_src = RouteSpec {
            pref_src: Some(ip("fd00::99")),
            ..v6
        };
        assert_eq!(
            nl.route_add(&[bad_src]).await.expect_err("src").errno(),
            Some(libc::EINVAL)
        );
        nl.route_del(&nl.routes(150)).await.expect("del");
        nl.route_del(&[Route {
            dst: net("fd00::/64"),
            table: 150,
            oif: None,
            gateway: None,
            pref_src: None,
            protocol: 4,
            scope: 0,
        }])
        .await
        .expect("already gone is fine");
        assert!(nl.routes(150).is_empty());
    }

    #[tokio::test]
    async fn rules_behave_like_the_kernel() {
        let nl = FakeNetlink::new();
        let rule = Rule {
            fwmark: Some(5871),
            invert: true,
            ..Rule::lookup(IpFamily::V4, 150)
        };
        assert!(ensure_rule(&nl, &rule).await.expect("add"));
        assert!(!ensure_rule(&nl, &rule).await.expect("idempotent"));
        let stored = nl
            .rules()
            .into_iter()
            .find(|r| r.table == 150)
            .expect("stored");
        assert_eq!(stored.priority, Some(32765));
        assert_eq!(stored.fwmask, Some(u32::MAX));

        let pinned = Rule {
            priority: Some(100),
            ..Rule::lookup(IpFamily::V6, 150)
        };
        nl.rule_add(&pinned).await.expect("add v6");
        assert!(nl.rule_add(&pinned).await.expect_err("dup").is_exists());
        nl.rule_del(&pinned).await.expect("del");
        assert!(nl.rule_del(&pinned).await.expect_err("gone").is_not_found());

        let bad = Rule {
            dst: Some(net("fd00::/64")),
            ..Rule::lookup(IpFamily::V4, 150)
        };
        assert!(matches!(
            nl.rule_add(&bad).await,
            Err(Error::InvalidInput { .. })
        ));
    }

    #[tokio::test]
    async fn route_get_is_longest_prefix_match() {
        let nl = FakeNetlink::new();
        let eth = dummy_up(&nl, "eth0").await;
        let wg = dummy_up(&nl, "wg0").await;
        nl.link_set_mtu(eth.index, 9000).await.expect("mtu");
        nl.addr_add(eth.index, net("192.168.1.10/24"))
            .await
            .expect("addr");
        nl.addr_add(wg.index, net("10.0.0.1/32"))
            .await
            .expect("addr");
        let via_wg = RouteSpec {
            dst: net("172.16.0.0/12"),
            oif: wg.index,
            table: TABLE_MAIN,
            pref_src: None,
        };
        nl.route_add(&[via_wg]).await.expect("route");

        let lookup = nl.route_get(ip("192.168.1.77")).await.expect("on-link");
        assert_eq!(
            lookup,
            RouteLookup {
                oif: eth.index,
                pref_src: Some(ip("192.168.1.10")),
                gateway: None
            }
        );
        assert_eq!(
            underlay_mtu(&nl, ip("192.168.1.77")).await.expect("mtu"),
            9000
        );
        assert_eq!(
            source_for(&nl, ip("172.20.0.1")).await.expect("src"),
            Some(ip("10.0.0.1"))
        );
        let err = nl
            .route_get(ip("8.8.8.8"))
            .await
            .expect_err("no default route");
        assert_eq!(err.errno(), Some(libc::ENETUNREACH));
    }

    #[tokio::test]
    async fn injected_failures_hit_the_next_call_only() {
        let nl = FakeNetlink::new();
        nl.fail_next(Method::LinkAdd, libc::EPERM);
        let err = nl
            .link_add("d0", &LinkKind::Dummy)
            .await
            .expect_err("injected");
        assert!(err.is_permission(), "{err}");
        assert!(nl.link("d0").is_none(), "a failed call changes nothing");
        nl.link_add("d0", &LinkKind::Dummy)
            .await
            .expect("next call works");
        assert_eq!(nl.calls(Method::LinkAdd), 2);
        assert_eq!(
            nl.ops(),
            vec![
                "link_add d0 dummy".to_owned(),
                "link_add d0 dummy".to_owned()
            ]
        );
    }
}
