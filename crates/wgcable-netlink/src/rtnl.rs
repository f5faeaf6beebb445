//! [`Netlink`] over a real rtnetlink socket.
//!
//! Messages are built here directly from `netlink-packet-route` types rather than through
//! rtnetlink's request builders, so that every request carries exactly the flags and
//! attributes the kernel needs (lookup action on rules, `RTA_TABLE` for big table ids,
//! replace semantics on routes) and every error keeps its errno.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkDummy, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, LinkWireguard,
};

use crate::error::{Error, Op};
use crate::types::{
    link_name_problem, IpFamily, Link, LinkKind, Route, RouteLookup, RouteSpec, Rule,
};
use crate::Netlink;

/// How many requests of a batch are in flight at once. Enough to hide the round trip;
/// small enough that the kernel's answers (an ack each, or an error echoing the request)
/// never overflow the socket's receive buffer, which would lose answers (`ENOBUFS`).
const MAX_IN_FLIGHT: usize = 128;

/// `RTPROT_STATIC`: routes this crate installs say they were put there by an administrator.
const PROTOCOL: RouteProtocol = RouteProtocol::Static;

/// The rtnetlink-backed [`Netlink`]: one socket, cloneable handle inside.
///
/// Any number of tasks may use it (and its clones) at once: other requests are pipelined on
/// the socket, but dumps take turns, because the kernel runs one dump per socket at a time
/// and refuses a second one with EBUSY ("Device or resource busy").
#[derive(Debug, Clone)]
pub struct RtNetlink {
    handle: Handle,
    dumps: Arc<tokio::sync::Mutex<()>>,
}

impl RtNetlink {
    /// Opens a rtnetlink socket in the calling thread's network namespace.
    ///
    /// Returns the client and the connection future that does the socket I/O; the caller
    /// spawns it (`tokio::spawn(conn)`), and requests fail once it stops. Must be called
    /// from inside a tokio runtime, whose reactor the socket registers with.
    pub fn connect() -> Result<(RtNetlink, impl Future<Output = ()> + Send + 'static), Error> {
        // rtnetlink would panic without a reactor; say so as an error instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Connect(io::Error::other(
                "RtNetlink::connect must be called from inside a tokio runtime",
            )));
        }
        let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(Error::Connect)?;
        Ok((RtNetlink::from_handle(handle), conn))
    }

    /// Wraps a handle whose connection the caller already runs. Dumps take turns among the
    /// clones of what this returns; wrap each connection's handle once.
    pub fn from_handle(handle: Handle) -> RtNetlink {
        RtNetlink {
            handle,
            dumps: Arc::default(),
        }
    }

    /// The underlying rtnetlink handle, for operations this crate does not offer.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends one request and collects the messages that answer it (none for an ack).
    async fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> Op,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let _turn = if flags & NLM_F_DUMP != 0 {
            Some(self.dumps.lock().await)
        } else {
            None
        };
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = match handle.request(req) {
            Ok(answers) => answers,
            Err(_) => {
                return Err(Error::Protocol {
                    op: op(),
                    detail: "the netlink connection is closed (is its future still running?)"
                        .to_owned(),
                })
            }
        };
        let mut out = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(message) => out.push(message),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(Error::Kernel {
                        op: op(),
                        source: err.to_io(),
                    });
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(Error::Protocol {
                        op: op(),
                        detail: "the kernel's answer overran the socket buffer".to_owned(),
                    });
                }
                // Acks, done and noop messages carry nothing.
                _ => {}
            }
        }
        Ok(out)
    }

    async fn ack(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> Op,
    ) -> Result<(), Error> {
        self.request(message, flags | NLM_F_REQUEST | NLM_F_ACK, op)
            .await
            .map(drop)
    }

    async fn get_link(
        &self,
        message: LinkMessage,
        op: impl FnOnce() -> Op,
    ) -> Result<Option<Link>, Error> {
        match self
            .request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST, op)
            .await
        {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from_message(&link)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn route_add_one(&self, spec: &RouteSpec) -> Result<(), Error> {
        let op = || Op::RouteAdd {
            dst: spec.dst,
            table: spec.table,
            oif: spec.oif,
        };
        if let Some(src) = spec.pref_src {
            if IpFamily::of(src) != IpFamily::of_net(&spec.dst) {
                return Err(Error::InvalidInput {
                    op: op(),
                    reason: format!("the source {src} is not of the family of the destination"),
                });
            }
        }
        let mut msg = route_message(spec.dst, spec.table);
        msg.header.protocol = PROTOCOL;
        // `ip route add PREFIX dev LINK` gives IPv4 link scope (the destination is on-link);
        // IPv6 routes have no scope.
        if IpFamily::of_net(&spec.dst) == IpFamily::V4 {
            msg.header.scope = RouteScope::Link;
        }
        msg.attributes.push(RouteAttribute::Oif(spec.oif));
        if let Some(src) = spec.pref_src {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            op,
        )
        .await
    }

    async fn route_del_one(&self, route: &Route) -> Result<(), Error> {
        let mut msg = route_message(route.dst, route.table);
        // Everything the kernel reported narrows the match, so exactly this route goes.
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::from(route.scope);
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(src) = route.pref_src {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let op = || Op::RouteDel {
            dst: route.dst,
            table: route.table,
        };
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0, op).await {
            // Already gone (ESRCH), or its link is (ENODEV): the goal is reached.
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Runs `one` for every item with up to [`MAX_IN_FLIGHT`] requests outstanding. Every
    /// request is carried out even if some fail; the first failure is returned.
    ///
    /// `one` is a plain function returning a boxed future rather than a closure: the
    /// `Send` check of `async_trait` futures cannot see through closures over borrowed
    /// items.
    async fn pipeline<T: Sync>(
        &self,
        items: &[T],
        one: for<'a> fn(&'a RtNetlink, &'a T) -> BoxFuture<'a, Result<(), Error>>,
    ) -> Result<(), Error> {
        let mut in_flight = FuturesUnordered::new();
        let mut pending = items.iter();
        let mut first_error = None;
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                match pending.next() {
                    Some(item) => in_flight.push(one(self, item)),
                    None => break,
                }
            }
            match in_flight.next().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[async_trait::async_trait]
impl Netlink for RtNetlink {
    async fn link_get(&self, name: &str) -> Result<Option<Link>, Error> {
        let op = || Op::LinkGet {
            name: name.to_owned(),
        };
        if let Some(reason) = link_name_problem(name) {
            return Err(Error::InvalidInput {
                op: op(),
                reason: reason.to_owned(),
            });
        }
        self.get_link(LinkUnspec::new_with_name(name).build(), op)
            .await
    }

    async fn link_get_by_index(&self, index: u32) -> Result<Option<Link>, Error> {
        // Index 0 means "no index" to the kernel, which would then want a name.
        if index == 0 {
            return Ok(None);
        }
        self.get_link(LinkUnspec::new_with_index(index).build(), || {
            Op::LinkGetByIndex { index }
        })
        .await
    }

    async fn link_list(&self) -> Result<Vec<Link>, Error> {
        let answers = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
                || Op::LinkList,
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from_message(link)),
                _ => None,
            })
            .collect())
    }

    async fn link_add(&self, name: &str, kind: &LinkKind) -> Result<Link, Error> {
        let op = || Op::LinkAdd {
            name: name.to_owned(),
            kind: kind.as_str().to_owned(),
        };
        if let Some(reason) = link_name_problem(name) {
            return Err(Error::InvalidInput {
                op: op(),
                reason: reason.to_owned(),
            });
        }
        let message = match kind {
            LinkKind::Wireguard => LinkWireguard::new(name).build(),
            LinkKind::Dummy => LinkDummy::new(name).build(),
            LinkKind::Veth { peer } => {
                if let Some(reason) = link_name_problem(peer) {
                    return Err(Error::InvalidInput {
                        op: op(),
                        reason: format!("veth peer {peer:?}: {reason}"),
                    });
                }
                LinkVeth::new(name, peer).build()
            }
            LinkKind::Vxlan {
                vni,
                port,
                dev,
                local,
            } => {
                let mut builder = LinkVxlan::new(name, *vni);
                if let Some(port) = port {
                    builder = builder.port(*port);
                }
                if let Some(dev) = dev {
                    builder = builder.dev(*dev);
                }
                builder = match local {
                    Some(IpAddr::V4(a)) => builder.local(*a),
                    Some(IpAddr::V6(a)) => builder.local6(*a),
                    None => builder,
                };
                builder.build()
            }
            LinkKind::Other(kind) => {
                LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::from(kind.as_str()))
                    .name(name)
                    .build()
            }
        };
        self.ack(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            op,
        )
        .await?;
        self.link_get(name).await?.ok_or_else(|| Error::Protocol {
            op: op(),
            detail: "the link was created but is gone when read back".to_owned(),
        })
    }

    async fn link_del(&self, index: u32) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).build();
        self.ack(RouteNetlinkMessage::DelLink(message), 0, || Op::LinkDel {
            index,
        })
        .await
    }

    async fn link_set_up(&self, index: u32, up: bool) -> Result<(), Error> {
        let builder = LinkUnspec::new_with_index(index);
        let message = if up { builder.up() } else { builder.down() }.build();
        self.ack(RouteNetlinkMessage::SetLink(message), 0, || Op::LinkSetUp {
            index,
            up,
        })
        .await
    }

    async fn link_set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.ack(RouteNetlinkMessage::SetLink(message), 0, || {
            Op::LinkSetMtu { index, mtu }
        })
        .await
    }

    async fn addr_list(&self, index: u32) -> Result<Vec<IpNet>, Error> {
        let mut request = AddressMessage::default();
        request.header.index = index;
        let answers = self
            .request(
                RouteNetlinkMessage::GetAddress(request),
                NLM_F_REQUEST | NLM_F_DUMP,
                || Op::AddrList { index },
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                // Without strict checking the kernel dumps every link's addresses.
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    addr_from_message(a)
                }
                _ => None,
            })
            .collect())
    }

    async fn addr_add(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let mut message = addr_message(index, addr);
        if let IpNet::V6(_) = addr {
            // Skip duplicate address detection: a tentative address cannot be a route's
            // preferred source or a packet's source for the ~2 s DAD takes, and the
            // addresses this crate is asked to manage come from an address plan.
            message.header.flags |= AddressHeaderFlags::Nodad;
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
            || Op::AddrAdd { index, addr },
        )
        .await
    }

    async fn addr_del(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let message = addr_message(index, addr);
        self.ack(RouteNetlinkMessage::DelAddress(message), 0, || {
            Op::AddrDel { index, addr }
        })
        .await
    }

    async fn route_list(&self, table: u32) -> Result<Vec<Route>, Error> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            let answers = self
                .request(
                    RouteNetlinkMessage::GetRoute(request),
                    NLM_F_REQUEST | NLM_F_DUMP,
                    || Op::RouteList { table },
                )
                .await?;
            // The dump covers every table; the kernel only filters with strict checking.
            routes.extend(answers.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => {
                    route_from_message(r).filter(|r| r.table == table)
                }
                _ => None,
            }));
        }
        Ok(routes)
    }

    async fn route_add(&self, routes: &[RouteSpec]) -> Result<(), Error> {
        self.pipeline(routes, |nl, spec| Box::pin(nl.route_add_one(spec)))
            .await
    }

    async fn route_del(&self, routes: &[Route]) -> Result<(), Error> {
        self.pipeline(routes, |nl, route| Box::pin(nl.route_del_one(route)))
            .await
    }

    async fn rule_list(&self) -> Result<Vec<Rule>, Error> {
        let mut rules = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RuleMessage::default();
            request.header.family = family;
            let answers = self
                .request(
                    RouteNetlinkMessage::GetRule(request),
                    NLM_F_REQUEST | NLM_F_DUMP,
                    || Op::RuleList,
                )
                .await?;
            rules.extend(answers.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => rule_from_message(r),
                _ => None,
            }));
        }
        Ok(rules)
    }

    async fn rule_add(&self, rule: &Rule) -> Result<(), Error> {
        let op = || Op::RuleAdd { rule: rule.clone() };
        if let Some(reason) = rule.invalid_reason() {
            return Err(Error::InvalidInput { op: op(), reason });
        }
        self.ack(
            RouteNetlinkMessage::NewRule(rule_message(rule)),
            NLM_F_CREATE | NLM_F_EXCL,
            op,
        )
        .await
    }

    async fn rule_del(&self, rule: &Rule) -> Result<(), Error> {
        let op = || Op::RuleDel { rule: rule.clone() };
        if let Some(reason) = rule.invalid_reason() {
            return Err(Error::InvalidInput { op: op(), reason });
        }
        // The kernel deletes the first rule that matches the selectors given, and an absent
        // selector matches anything: "lookup 150" alone would delete a fwmark rule. So find
        // the exact rule first and delete it by its full description, priority included.
        let existing = self.rule_list().await?;
        let Some(exact) = existing.iter().find(|r| rule.matches(r)) else {
            return Err(Error::from_errno(op(), libc::ENOENT));
        };
        self.ack(RouteNetlinkMessage::DelRule(rule_message(exact)), 0, op)
            .await
    }

    async fn route_get(&self, dst: IpAddr) -> Result<RouteLookup, Error> {
        let op = || Op::RouteGet { dst };
        let full = match dst {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let net = IpNet::new(dst, full).expect("a full-length prefix is valid");
        let mut request = route_message(net, 0);
        request.header.protocol = RouteProtocol::Unspec;
        request.header.kind = RouteType::Unspec;
        let answers = self
            .request(RouteNetlinkMessage::GetRoute(request), NLM_F_REQUEST, op)
            .await?;
        let route = answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        });
        let Some(route) = route else {
            return Err(Error::Protocol {
                op: op(),
                detail: "the kernel answered without a route".to_owned(),
            });
        };
        let mut lookup = RouteLookup {
            oif: 0,
            pref_src: None,
            gateway: None,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(oif) => lookup.oif = *oif,
                RouteAttribute::PrefSource(a) => lookup.pref_src = ip_of(a),
                RouteAttribute::Gateway(a) => lookup.gateway = ip_of(a),
                _ => {}
            }
        }
        if lookup.oif == 0 {
            // Blackhole/unreachable/prohibit routes resolve to no link.
            return Err(Error::from_errno(op(), libc::ENETUNREACH));
        }
        Ok(lookup)
    }
}

fn family_of(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A unicast route message for `dst` in `table`, with `RTA_TABLE` so ids above 255 work.
fn route_message(dst: IpNet, table: u32) -> RouteMessage {
    let dst = dst.trunc();
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(IpFamily::of_net(&dst));
    msg.header.destination_prefix_length = dst.prefix_len();
    // The header only has 8 bits; the kernel prefers RTA_TABLE when present.
    msg.header.table = u8::try_from(table).unwrap_or(0);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    if table != 0 {
        msg.attributes.push(RouteAttribute::Table(table));
    }
    if dst.prefix_len() != 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    msg
}

fn route_from_message(msg: &RouteMessage) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let family = match msg.header.address_family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    let mut table = u32::from(msg.header.table);
    let mut dst_addr = None;
    let mut route = Route {
        dst: family.any(),
        table,
        oif: None,
        gateway: None,
        pref_src: None,
        protocol: u8::from(msg.header.protocol),
        scope: u8::from(msg.header.scope),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst_addr = ip_of(a),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::PrefSource(a) => route.pref_src = ip_of(a),
            _ => {}
        }
    }
    route.table = table;
    if let Some(addr) = dst_addr {
        route.dst = IpNet::new(addr, msg.header.destination_prefix_length).ok()?;
    }
    Some(route)
}

fn addr_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.family = family_of(IpFamily::of_net(&addr));
    // IFA_LOCAL is the address; IFA_ADDRESS is the same unless point-to-point.
    msg.attributes.push(AddressAttribute::Local(addr.addr()));
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    msg
}

fn addr_from_message(msg: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the local address when present (point-to-point links put the peer in
    // IFA_ADDRESS); IPv6 usually sends only IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

fn link_from_message(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        flags: msg.header.flags.bits(),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// A "lookup table" rule message. The action is set explicitly: rtnetlink's default
/// (`FR_ACT_UNSPEC`) is accepted by the kernel, but such a rule then fails every lookup.
fn rule_message(rule: &Rule) -> RuleMessage {
    let rule = rule.normalized();
    let mut msg = RuleMessage::default();
    msg.header.family = family_of(rule.family);
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(rule.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Table(rule.table));
    if rule.invert {
        msg.header.flags |= RuleFlags::Invert;
    }
    if let Some(priority) = rule.priority {
        msg.attributes.push(RuleAttribute::Priority(priority));
    }
    if let Some(dst) = rule.dst {
        msg.header.dst_len = dst.prefix_len();
        msg.attributes.push(RuleAttribute::Destination(dst.addr()));
    }
    if let Some(src) = rule.src {
        msg.header.src_len = src.prefix_len();
        msg.attributes.push(RuleAttribute::Source(src.addr()));
    }
    if let Some(mark) = rule.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(mark));
    }
    if let Some(mask) = rule.fwmask {
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    msg
}

/// The rule, if it is a plain "lookup table" rule this crate can describe; rules with
/// other actions or with selectors `Rule` does not model (iif, oif, tos, uid range, ports,
/// ...) are left out rather than shown as broader than they are.
fn rule_from_message(msg: &RuleMessage) -> Option<Rule> {
    if msg.header.action != RuleAction::ToTable || msg.header.tos != 0 {
        return None;
    }
    let family = match msg.header.family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    let mut rule = Rule::lookup(family, u32::from(msg.header.table));
    // The kernel leaves out FRA_PRIORITY for priority 0.
    rule.priority = Some(0);
    rule.invert = msg.header.flags.contains(RuleFlags::Invert);
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Priority(p) => rule.priority = Some(*p),
            RuleAttribute::Destination(a) => rule.dst = IpNet::new(*a, msg.header.dst_len).ok(),
            RuleAttribute::Source(a) => rule.src = IpNet::new(*a, msg.header.src_len).ok(),
            RuleAttribute::FwMark(m) => rule.fwmark = Some(*m),
            RuleAttribute::FwMask(m) => rule.fwmask = Some(*m),
            // Attributes the kernel reports for every rule and that select nothing.
            RuleAttribute::Protocol(_) | RuleAttribute::SuppressPrefixLen(_) => {}
            RuleAttribute::SuppressIfGroup(_) => {}
            _ => return None,
        }
    }
    Some(rule.normalized())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    #[test]
    fn rule_message_always_looks_up_and_carries_big_tables() {
        let rule = Rule {
            priority: Some(100),
            fwmark: Some(0x1000),
            invert: true,
            ..Rule::lookup(IpFamily::V4, 1000)
        };
        let msg = rule_message(&rule);
        assert_eq!(msg.header.action, RuleAction::ToTable);
        assert!(msg.header.flags.contains(RuleFlags::Invert));
        assert!(msg.attributes.contains(&RuleAttribute::Table(1000)));
        // Parsing what we send gives the rule back (mask made explicit).
        let back = rule_from_message(&msg).expect("a lookup rule parses");
        assert!(rule.matches(&back), "{back:?}");
        assert_eq!(back.fwmask, Some(u32::MAX));
    }

    #[test]
    fn route_message_round_trips() {
        let spec_dst = net("10.1.2.3/16");
        let mut msg = route_message(spec_dst, 150);
        msg.attributes.push(RouteAttribute::Oif(4));
        let route = route_from_message(&msg).expect("unicast route parses");
        assert_eq!(route.dst, net("10.1.0.0/16"));
        assert_eq!(route.table, 150);
        assert_eq!(route.oif, Some(4));

        let default = route_from_message(&route_message(net("::/0"), 300)).expect("parses");
        assert_eq!(default.dst, net("::/0"));
        assert_eq!(default.table, 300);
    }

    #[test]
    fn non_lookup_rules_are_left_out() {
        let mut msg = rule_message(&Rule::lookup(IpFamily::V6, 150));
        msg.header.action = RuleAction::Blackhole;
        assert_eq!(rule_from_message(&msg), None);
        let mut msg = rule_message(&Rule::lookup(IpFamily::V6, 150));
        msg.attributes
            .push(RuleAttribute::Iifname("eth0".to_owned()));
        assert_eq!(rule_from_message(&msg), None);
    }
}
