//! A blocking generic netlink socket for the `wireguard` family: resolves the family, sends one
//! request, collects its replies, and keeps what the kernel said when it refused: the errno and
//! its extended-ack message.
//!
//! Written here rather than taken from `netlink_request` (what `wireguard_control` uses): that
//! one drops the kernel's extended ack, and echoes whole requests (keys included) into its
//! error texts. The socket asks the kernel not to echo our request back in errors
//! (`NETLINK_CAP_ACK`), so a refused request's private key never comes back to us.

use std::fmt;
use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_packet_utils::{Emitable, ParseableParametrized};
use netlink_packet_wireguard::Wireguard;
use netlink_sys::constants::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};
use zeroize::Zeroize;

/// Large enough for any message the kernel sends a dump reader (it caps them at 32 KiB).
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// Longest extended-ack text we keep (the kernel's are short, fixed strings).
const MAX_REASON_LEN: usize = 256;

/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel refused a request: its errno and, when it gave one, its reason (extended ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRefusal {
    /// A positive errno, e.g. 22 for EINVAL.
    pub errno: i32,
    /// The kernel's extended-ack message, if it sent one.
    pub reason: Option<String>,
}

impl fmt::Display for KernelRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            io::Error::from_raw_os_error(self.errno),
            self.errno
        )?;
        if let Some(reason) = &self.reason {
            write!(f, "; the kernel says: {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelRefusal {}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The socket itself failed (open, send, receive).
    Io(io::Error),
    /// The kernel answered with an error.
    Refused(KernelRefusal),
    /// The kernel's answer could not be parsed.
    Decode(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// One reply message of a request: its netlink flags (e.g. `NLM_F_DUMP_INTR`) and payload.
pub(crate) struct Reply<F> {
    pub flags: u16,
    pub payload: F,
}

/// A generic netlink socket bound to the `wireguard` family.
pub(crate) struct WgSocket {
    socket: Socket,
    family: u16,
    sequence: u32,
    buf: Vec<u8>,
}

impl WgSocket {
    /// Opens a socket and resolves the `wireguard` family. A refusal with `ENOENT` means the
    /// kernel has no WireGuard.
    pub(crate) fn open() -> Result<Self, Failure> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Ask for the kernel's reasons, and not for our request back inside its errors.
        socket.set_ext_ack(true)?;
        socket.set_cap_ack(true)?;
        let mut s = Self {
            socket,
            family: 0,
            sequence: 0,
            buf: vec![0; RECV_BUFFER_LEN],
        };
        let lookup = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                Wireguard::family_name().to_owned(),
            )],
        });
        // The controller's own family id is fixed (GENL_ID_CTRL), which GenlCtrl knows.
        let replies = s.request(lookup, NLM_F_REQUEST | NLM_F_ACK)?;
        s.family = replies
            .iter()
            .flat_map(|r| r.payload.nlas.iter())
            .find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| Failure::Decode("the controller did not name the family".to_owned()))?;
        Ok(s)
    }

    /// Sends one WireGuard request and returns its replies.
    pub(crate) fn wireguard(
        &mut self,
        payload: Wireguard,
        flags: u16,
    ) -> Result<Vec<Reply<Wireguard>>, Failure> {
        let mut message = GenlMessage::from_payload(payload);
        message.set_resolved_family_id(self.family);
        self.request(message, flags)
    }

    fn request<F>(&mut self, message: GenlMessage<F>, flags: u16) -> Result<Vec<Reply<F>>, Failure>
    where
        F: GenlFamily
            + Clone
            + fmt::Debug
            + Eq
            + Emitable
            + ParseableParametrized<[u8], GenlHeader>,
        GenlMessage<F>: Clone + fmt::Debug + Eq + NetlinkSerializable + NetlinkDeserializable,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut out = vec![0u8; request.buffer_len()];
        request.serialize(&mut out);
        let len = out.len();
        let sent = self.socket.send(&out, 0);
        // The request may hold a private or pre-shared key.
        out.zeroize();
        drop(request);
        if sent? != len {
            return Err(Failure::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                "the netlink request was sent in part only",
            )));
        }
        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(bytes)
                    .map_err(|e| Failure::Decode(format!("a netlink reply: {e}")))?;
                let len = reply.header.length as usize;
                let reply_flags = reply.header.flags;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            Some(code) => {
                                return Err(Failure::Refused(KernelRefusal {
                                    errno: code.get().abs(),
                                    reason: ext_ack_reason(reply_flags, &e.header),
                                }))
                            }
                            // The ACK: the request is done.
                            None => return Ok(replies),
                        },
                        NetlinkPayload::Done(done) => {
                            if done.code != 0 {
                                return Err(Failure::Refused(KernelRefusal {
                                    errno: done.code.abs(),
                                    reason: tlv_reason(&done.extended_ack),
                                }));
                            }
                            return Ok(replies);
                        }
                        NetlinkPayload::InnerMessage(m) => replies.push(Reply {
                            flags: reply_flags,
                            payload: m.payload,
                        }),
                        NetlinkPayload::Overrun(_) => {
                            return Err(Failure::Io(io::Error::other(
                                "the kernel's reply overran the receive buffer",
                            )))
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += align4(len);
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The extended-ack message of an NLMSG_ERROR payload (what follows the error code): the
/// original request comes first (its header only when capped), then the attributes.
pub(crate) fn ext_ack_reason(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let original_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize
    };
    tlv_reason(payload.get(align4(original_len)..)?)
}

/// Finds `NLMSGERR_ATTR_MSG` among netlink attributes.
fn tlv_reason(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            let text: String = String::from_utf8_lossy(&value[..end])
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_LEN)
                .collect();
            return (!text.is_empty()).then_some(text);
        }
        tlvs = tlvs.get(align4(len)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn original_header(len: u32) -> Vec<u8> {
        let mut h = vec![0u8; 16];
        h[..4].copy_from_slice(&len.to_ne_bytes());
        h
    }

    #[test]
    fn the_reason_is_read_from_a_capped_error() {
        let mut payload = original_header(4096);
        payload.extend(tlv(2, &7u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS comes first
        payload.extend(tlv(
            NLMSGERR_ATTR_MSG,
            b"Attribute failed policy validation\0",
        ));
        assert_eq!(
            ext_ack_reason(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).as_deref(),
            Some("Attribute failed policy validation")
        );
    }

    #[test]
    fn the_reason_follows_a_whole_echoed_request() {
        let mut payload = original_header(22);
        payload.extend([0u8; 8]); // 22 bytes of request, padded to 24
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"bad\0"));
        assert_eq!(
            ext_ack_reason(NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("bad")
        );
    }

    #[test]
    fn no_tlvs_or_garbage_means_no_reason() {
        let payload = original_header(16);
        assert_eq!(ext_ack_reason(NLM_F_CAPPED, &payload), None);
        let mut garbage = original_header(16);
        garbage.extend([0xff, 0xff, 1, 0]);
        assert_eq!(
            ext_ack_reason(NLM_F_ACK_TLVS | NLM_F_CAPPED, &garbage),
            None
        );
        assert_eq!(ext_ack_reason(NLM_F_ACK_TLVS, &[1, 2]), None);
        let control = [original_header(16), tlv(NLMSGERR_ATTR_MSG, b"a\x1b[31mb\0")].concat();
        assert_eq!(
            ext_ack_reason(NLM_F_ACK_TLVS | NLM_F_CAPPED, &control).as_deref(),
            Some("a[31mb")
        );
    }

    #[test]
    fn a_refusal_says_errno_and_reason() {
        let r = KernelRefusal {
            errno: 22,
            reason: Some("Attribute failed policy validation".to_owned()),
        };
        let text = r.to_string();
        assert!(text.contains("errno 22"), "{text}");
        assert!(
            text.contains("the kernel says: Attribute failed policy validation"),
            "{text}"
        );
        let bare = KernelRefusal {
            errno: 19,
            reason: None,
        };
        assert!(!bare.to_string().contains("kernel says"));
    }
}
