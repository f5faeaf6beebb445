//! Plain data the [`Netlink`](crate::Netlink) trait speaks: links, routes, rules.
//!
//! `Spec` types describe what the caller wants; the others are what the kernel reports.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The main routing table (`ip route` without `table`).
pub const TABLE_MAIN: u32 = 254;
/// The local routing table, where the kernel keeps local and broadcast routes.
pub const TABLE_LOCAL: u32 = 255;
/// The `default` routing table, consulted last by the default rules.
pub const TABLE_DEFAULT: u32 = 253;

/// `IFF_UP`: the administrative state bit of [`Link::flags`].
pub const IFF_UP: u32 = libc::IFF_UP as u32;

/// `RTPROT_STATIC`: the protocol of the routes [`Netlink::route_add`](crate::Netlink::route_add)
/// installs (put there by an administrator, not a routing daemon).
pub const RTPROT_STATIC: u8 = 4;
/// `RT_SCOPE_UNIVERSE`: a route to a destination anywhere.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`: a route to a destination on the link itself.
pub const RT_SCOPE_LINK: u8 = 253;

/// The longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
pub const MAX_LINK_NAME_LEN: usize = 15;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The ifindex; stable while the link exists, never reused right away.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The kernel's kind string (`IFLA_INFO_KIND`: "dummy", "veth", ...); `None` for
    /// physical devices and loopback, which have no link info.
    pub kind: Option<String>,
    /// The MTU in bytes.
    pub mtu: u32,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// All `IFF_*` flags.
    pub flags: u32,
}

/// The kind of link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A WireGuard device (needs the kernel module; see [`Error::is_unsupported`](crate::Error::is_unsupported)).
    Wireguard,
    /// A dummy device: a link that drops everything, handy to hang addresses and routes on.
    Dummy,
    /// A veth pair; the link created is one end, `peer` the other.
    Veth {
        /// Name of the other end, created in the same network namespace.
        peer: String,
    },
    /// A VXLAN device.
    Vxlan {
        /// The VXLAN network identifier (24 bits).
        vni: u32,
        /// UDP destination port; the kernel's default (8472) when `None`.
        port: Option<u16>,
        /// Index of the underlay link the tunnel is bound to.
        dev: Option<u32>,
        /// Local underlay address used as the source of encapsulated packets.
        local: Option<IpAddr>,
    },
    /// Any other kind, by its kernel name (for example "bridge").
    Other(String),
}

impl LinkKind {
    /// The kernel's kind string (`IFLA_INFO_KIND`), as `ip -d link` shows it.
    pub fn as_str(&self) -> &str {
        match self {
            LinkKind::Wireguard => "wireguard",
            LinkKind::Dummy => "dummy",
            LinkKind::Veth { .. } => "veth",
            LinkKind::Vxlan { .. } => "vxlan",
            LinkKind::Other(kind) => kind,
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: &IpNet) -> IpFamily {
        IpFamily::of(net.addr())
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn any(self) -> IpNet {
        match self {
            IpFamily::V4 => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            IpFamily::V6 => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
        .expect("a zero prefix length is valid for both families")
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "inet",
            IpFamily::V6 => "inet6",
        })
    }
}

/// A unicast route as the kernel reports it.
///
/// Only unicast routes are listed: local, broadcast, multicast, blackhole and other route
/// types are not this crate's business.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: IpNet,
    /// The routing table id.
    pub table: u32,
    /// The output link, if the route has a single next hop on a link.
    pub oif: Option<u32>,
    /// The next-hop gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The preferred source address (`src` in `ip route`).
    pub pref_src: Option<IpAddr>,
    /// `RTPROT_*`: who installed the route (4 = static, what this crate uses).
    pub protocol: u8,
    /// `RT_SCOPE_*` (0 = universe, 253 = link).
    pub scope: u8,
}

impl Route {
    /// The address family of the route.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.dst)
    }
}

/// A desired route: `dst` reachable directly through link `oif` in `table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// The destination prefix; host bits are ignored (`10.0.0.1/24` means `10.0.0.0/24`).
    pub dst: IpNet,
    /// The output link.
    pub oif: u32,
    /// The routing table id.
    pub table: u32,
    /// The preferred source address for traffic to `dst`.
    pub pref_src: Option<IpAddr>,
}

impl RouteSpec {
    /// The route as the kernel reports it once [`Netlink::route_add`](crate::Netlink::route_add)
    /// installed this spec: protocol static, link scope for IPv4 (`ip route add PREFIX dev
    /// LINK`: the destination is on-link), universe for IPv6 (which has no route scopes).
    /// Deleting exactly this value removes the route.
    pub fn installed(&self) -> Route {
        Route {
            dst: self.dst.trunc(),
            table: self.table,
            oif: Some(self.oif),
            gateway: None,
            pref_src: self.pref_src,
            protocol: RTPROT_STATIC,
            scope: match self.dst {
                IpNet::V4(_) => RT_SCOPE_LINK,
                IpNet::V6(_) => RT_SCOPE_UNIVERSE,
            },
        }
    }

    /// Whether the kernel's `route` is exactly this spec (same table, prefix, link and
    /// source, and no gateway).
    pub fn is_satisfied_by(&self, route: &Route) -> bool {
        route.table == self.table
            && route.dst.trunc() == self.dst.trunc()
            && route.oif == Some(self.oif)
            && route.gateway.is_none()
            && route.pref_src == self.pref_src
    }
}

/// A policy routing rule whose action is always "lookup `table`".
///
/// `priority: None` means "whatever the kernel picks" when adding, and "any priority"
/// when matching or deleting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The family the rule belongs to; `dst`/`src` must be of this family.
    pub family: IpFamily,
    /// The rule priority (`pref`); lower is consulted first.
    pub priority: Option<u32>,
    /// The table to look up.
    pub table: u32,
    /// Match packets to this prefix.
    pub dst: Option<IpNet>,
    /// Match packets from this prefix.
    pub src: Option<IpNet>,
    /// Match packets carrying this firewall mark.
    pub fwmark: Option<u32>,
    /// The mask applied to the mark before comparing (all ones when `None`).
    pub fwmask: Option<u32>,
    /// Match packets that do NOT match the selectors (`ip rule add not ...`).
    pub invert: bool,
}

impl Rule {
    /// A rule of `family` that looks up `table` for every packet.
    pub fn lookup(family: IpFamily, table: u32) -> Rule {
        Rule {
            family,
            priority: None,
            table,
            dst: None,
            src: None,
            fwmark: None,
            fwmask: None,
            invert: false,
        }
    }

    /// The rule as the kernel stores and reports it: prefixes truncated, `/0` prefixes
    /// dropped, a mark without a mask given the all-ones mask the kernel implies.
    pub(crate) fn normalized(&self) -> Rule {
        let prefix = |net: Option<IpNet>| net.filter(|n| n.prefix_len() != 0).map(|n| n.trunc());
        let (fwmark, fwmask) = match (self.fwmark, self.fwmask) {
            // The kernel stores "no mark" as mark 0 / mask 0 and reports no mark at all.
            (None | Some(0), None) | (None, Some(0)) => (None, None),
            (Some(mark), None) => (Some(mark), Some(u32::MAX)),
            (mark, Some(mask)) => (Some(mark.unwrap_or(0)), Some(mask)),
        };
        Rule {
            family: self.family,
            priority: self.priority,
            table: self.table,
            dst: prefix(self.dst),
            src: prefix(self.src),
            fwmark,
            fwmask,
            invert: self.invert,
        }
    }

    /// Whether the kernel's rule `existing` is this rule: every selector equal after
    /// normalisation; the priority only counts when this rule names one.
    pub fn matches(&self, existing: &Rule) -> bool {
        let want = self.normalized();
        let have = existing.normalized();
        want.family == have.family
            && want.table == have.table
            && want.dst == have.dst
            && want.src == have.src
            && want.fwmark == have.fwmark
            && want.fwmask == have.fwmask
            && want.invert == have.invert
            && want.priority.is_none_or(|p| have.priority == Some(p))
    }

    /// Why the kernel would refuse this rule, if it would.
    pub(crate) fn invalid_reason(&self) -> Option<String> {
        if self.table == 0 {
            return Some("a lookup rule needs a table other than 0".to_owned());
        }
        for (what, net) in [("destination", self.dst), ("source", self.src)] {
            if let Some(net) = net {
                if IpFamily::of_net(&net) != self.family {
                    return Some(format!("the {what} {net} is not of family {}", self.family));
                }
            }
        }
        None
    }
}

/// Shown the way `ip rule` prints it: `100: not from all fwmark 0x1 lookup 150`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(priority) = self.priority {
            write!(f, "{priority}: ")?;
        }
        write!(f, "{} ", self.family)?;
        if self.invert {
            f.write_str("not ")?;
        }
        match self.src {
            Some(src) => write!(f, "from {src}")?,
            None => f.write_str("from all")?,
        }
        if let Some(dst) = self.dst {
            write!(f, " to {dst}")?;
        }
        if let Some(mark) = self.fwmark {
            write!(f, " fwmark {mark:#x}")?;
        }
        if let Some(mask) = self.fwmask {
            write!(f, "/{mask:#x}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// What `ip route get DST` answers: the link, source and gateway the kernel would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    /// The output link.
    pub oif: u32,
    /// The source address the kernel would pick.
    pub pref_src: Option<IpAddr>,
    /// The next-hop gateway, if the destination is not on-link.
    pub gateway: Option<IpAddr>,
}

/// Whether the kernel accepts `name` as an interface name (`dev_valid_name`).
pub(crate) fn link_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > MAX_LINK_NAME_LEN {
        Some("the name is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("the name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("the name contains '/', ':' or whitespace")
    } else {
        None
    }
}
