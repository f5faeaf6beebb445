//! The crate's one error type, and the description of what was being done.

use std::fmt;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::types::Rule;

/// What this crate was doing when something failed; the first half of every message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `link_get`.
    LinkGet { name: String },
    /// `link_get_by_index`.
    LinkGetByIndex { index: u32 },
    /// `link_list`.
    LinkList,
    /// `link_add`.
    LinkAdd { name: String, kind: String },
    /// `link_del`.
    LinkDel { index: u32 },
    /// `link_set_up`.
    LinkSetUp { index: u32, up: bool },
    /// `link_set_mtu`.
    LinkSetMtu { index: u32, mtu: u32 },
    /// `addr_list`.
    AddrList { index: u32 },
    /// `addr_add`.
    AddrAdd { index: u32, addr: IpNet },
    /// `addr_del`.
    AddrDel { index: u32, addr: IpNet },
    /// `route_list`.
    RouteList { table: u32 },
    /// One route of `route_add`.
    RouteAdd { dst: IpNet, table: u32, oif: u32 },
    /// One route of `route_del`.
    RouteDel { dst: IpNet, table: u32 },
    /// `rule_list`.
    RuleList,
    /// `rule_add`.
    RuleAdd { rule: Rule },
    /// `rule_del`.
    RuleDel { rule: Rule },
    /// `route_get`.
    RouteGet { dst: IpAddr },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::LinkGet { name } => write!(f, "getting link {name}"),
            Op::LinkGetByIndex { index } => write!(f, "getting link with index {index}"),
            Op::LinkList => write!(f, "listing links"),
            Op::LinkAdd { name, kind } => write!(f, "creating link {name} of kind {kind}"),
            Op::LinkDel { index } => write!(f, "deleting link with index {index}"),
            Op::LinkSetUp { index, up } => {
                let state = if *up { "up" } else { "down" };
                write!(f, "setting link with index {index} {state}")
            }
            Op::LinkSetMtu { index, mtu } => {
                write!(f, "setting the MTU of link with index {index} to {mtu}")
            }
            Op::AddrList { index } => write!(f, "listing addresses of link with index {index}"),
            Op::AddrAdd { index, addr } => {
                write!(f, "adding address {addr} to link with index {index}")
            }
            Op::AddrDel { index, addr } => {
                write!(f, "removing address {addr} from link with index {index}")
            }
            Op::RouteList { table } => write!(f, "listing routes of table {table}"),
            Op::RouteAdd { dst, table, oif } => {
                write!(
                    f,
                    "adding route {dst} via link with index {oif} to table {table}"
                )
            }
            Op::RouteDel { dst, table } => write!(f, "deleting route {dst} from table {table}"),
            Op::RuleList => write!(f, "listing rules"),
            Op::RuleAdd { rule } => write!(f, "adding rule `{rule}`"),
            Op::RuleDel { rule } => write!(f, "deleting rule `{rule}`"),
            Op::RouteGet { dst } => write!(f, "looking up the route to {dst}"),
        }
    }
}

/// Everything that can go wrong in this crate.
///
/// Every message starts with what was being done; the OS error, when there is one, is
/// the [`source`](std::error::Error::source). Use the `is_*` predicates rather than
/// matching errno values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The rtnetlink socket could not be opened.
    #[error("opening a rtnetlink socket")]
    Connect(#[source] io::Error),
    /// The kernel refused an operation.
    #[error("{op}{}", hint(.op, .source))]
    Kernel {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// The netlink connection is gone or answered something this crate does not understand.
    #[error("{op}: {detail}")]
    Protocol { op: Op, detail: String },
    /// A link exists under the wanted name but is of another kind.
    #[error(
        "link {name} exists with kind {found} where kind {wanted} is wanted; \
         delete or rename it (it is never deleted silently)"
    )]
    WrongKind {
        name: String,
        wanted: String,
        found: String,
    },
    /// The caller asked for something the kernel can never accept.
    #[error("{op}: {reason}")]
    InvalidInput { op: Op, reason: String },
}

/// A short "what to do next" for the errors a user can fix.
fn hint(op: &Op, source: &io::Error) -> String {
    match (source.raw_os_error(), op) {
        (Some(libc::EOPNOTSUPP), Op::LinkAdd { kind, .. }) => format!(
            " (the kernel has no driver for links of kind {kind}: load its module, \
             or use a userspace implementation)"
        ),
        (Some(libc::EPERM | libc::EACCES), _) => {
            " (this needs CAP_NET_ADMIN in the network namespace)".to_owned()
        }
        _ => String::new(),
    }
}

impl Error {
    /// A kernel error for `op` with `errno`.
    pub fn from_errno(op: Op, errno: i32) -> Error {
        Error::Kernel {
            op,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The OS error number behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Connect(source) | Error::Kernel { source, .. } => source.raw_os_error(),
            Error::Protocol { .. } | Error::WrongKind { .. } | Error::InvalidInput { .. } => None,
        }
    }

    /// `EOPNOTSUPP`: the kernel lacks the feature, e.g. it has no WireGuard module.
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(libc::EOPNOTSUPP)
    }

    /// The object does not exist: no such link (`ENODEV`), route (`ESRCH`), rule
    /// (`ENOENT`) or address (`EADDRNOTAVAIL`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
        )
    }

    /// `EEXIST`: the object is already there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// `EPERM`/`EACCES`: the caller lacks `CAP_NET_ADMIN`.
    pub fn is_permission(&self) -> bool {
        matches!(self.errno(), Some(libc::EPERM | libc::EACCES))
    }

    /// What was being done, when the error is tied to one operation.
    pub fn op(&self) -> Option<&Op> {
        match self {
            Error::Kernel { op, .. }
            | Error::Protocol { op, .. }
            | Error::InvalidInput { op, .. } => Some(op),
            Error::Connect(_) | Error::WrongKind { .. } => None,
        }
    }
}
