//! SAL extensions: type-length-value records after the fixed header.
//!
//! Every extension starts with a type byte and a length byte; the length
//! counts the whole extension (type and length bytes included), is at least 4
//! and a multiple of 4, so every extension starts 32-bit aligned. Bit 0x80 of
//! the type is "must understand": a receiver that does not know a type skips
//! it when the bit is clear and rejects the frame when it is set. Known types
//! occur at most once per frame. Reserved bytes are sent as zero and ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::WireError;
use super::header::be_u64;
use crate::service_id::{ServiceId, ID_BYTES};

/// Most extensions (known or not) in one frame.
pub const MAX_EXTENSIONS: usize = 16;
/// Most addresses in an ADDRESS LIST.
pub const MAX_ADDRESSES: usize = 8;
/// The "must understand" bit of an extension type.
pub const CRITICAL: u8 = 0x80;

/// Extension type codes.
pub mod ext_type {
    pub const CONTROL: u8 = 0x81;
    pub const SERVICE_ID: u8 = 0x82;
    pub const DATA_SEQ: u8 = 0x83;
    pub const ACK: u8 = 0x84;
    pub const ADDRESS_LIST: u8 = 0x05;
    pub const MAC: u8 = 0x86;
    pub const RST_REASON: u8 = 0x07;
}

/// CONTROL flags.
pub mod ctl {
    pub const SYN: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const RSYN: u8 = 0x04;
    pub const FIN: u8 = 0x08;
    pub const RST: u8 = 0x10;
}

pub const CONTROL_LEN: usize = 20;
pub const SERVICE_LEN: usize = 36;
pub const DATA_SEQ_LEN: usize = 12;
pub const ACK_LEN: usize = 16;
pub const MAC_LEN: usize = 28;
pub const RST_REASON_LEN: usize = 4;
/// Bytes of the truncated HMAC in a MAC extension.
pub const MAC_TAG_LEN: usize = 16;

/// CONTROL: reliable control channel of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Control {
    /// `ctl::*` bits.
    pub flags: u8,
    /// Control sequence number of this frame.
    pub seq: u32,
    /// Next control sequence number expected from the peer (cumulative).
    pub ack: u32,
    /// The sender's nonce in SYN and SYN-ACK; the SYN's nonce in a refusing RST; else 0.
    pub nonce: u64,
}

/// ACKNOWLEDGEMENT: cumulative flow-byte ack and receive window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ack {
    /// Next flow byte offset expected (all bytes before it were received).
    pub ack: u64,
    /// Bytes the receiver accepts beyond `ack`.
    pub window: u32,
}

/// MAC: authentication of a control frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mac {
    /// Strictly increasing per sender and flow.
    pub counter: u64,
    /// HMAC-SHA-256 truncated to 16 bytes (see docs/sal-flow.md).
    pub tag: [u8; MAC_TAG_LEN],
}

/// Why a flow was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RstReason {
    Unspecified,
    /// No listener for the service ID.
    NoService,
    /// The acceptor refused the flow.
    Refused,
    /// Control retransmissions or resynchronisation ran out.
    Timeout,
    /// The peer violated the protocol.
    ProtocolError,
    /// The application aborted.
    Aborted,
    /// Out of flows or buffers.
    Resources,
    /// A code this version does not name.
    Other(u16),
}

impl RstReason {
    pub fn code(self) -> u16 {
        match self {
            RstReason::Unspecified => 0,
            RstReason::NoService => 1,
            RstReason::Refused => 2,
            RstReason::Timeout => 3,
            RstReason::ProtocolError => 4,
            RstReason::Aborted => 5,
            RstReason::Resources => 6,
            RstReason::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0 => RstReason::Unspecified,
            1 => RstReason::NoService,
            2 => RstReason::Refused,
            3 => RstReason::Timeout,
            4 => RstReason::ProtocolError,
            5 => RstReason::Aborted,
            6 => RstReason::Resources,
            other => RstReason::Other(other),
        }
    }
}

/// ADDRESS LIST: up to [`MAX_ADDRESSES`] socket addresses, stored inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrList {
    len: u8,
    addrs: [SocketAddr; MAX_ADDRESSES],
}

const UNSPEC: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl AddrList {
    /// Copies `addrs`; `TooManyAddresses` above the limit. IPv6 flow info
    /// and scope ID are not carried.
    pub fn new(addrs: &[SocketAddr]) -> Result<Self, WireError> {
        if addrs.len() > MAX_ADDRESSES {
            return Err(WireError::TooManyAddresses(addrs.len()));
        }
        let mut list = AddrList {
            len: addrs.len() as u8,
            addrs: [UNSPEC; MAX_ADDRESSES],
        };
        for (slot, a) in list.addrs.iter_mut().zip(addrs) {
            *slot = SocketAddr::new(a.ip(), a.port());
        }
        Ok(list)
    }

    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..usize::from(self.len)]
    }

    fn encoded_len(&self) -> usize {
        4 + self.as_slice().iter().map(entry_len).sum::<usize>()
    }
}

fn entry_len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        8
    } else {
        20
    }
}

/// The known extensions of one frame, each at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Extensions {
    pub control: Option<Control>,
    pub service: Option<ServiceId>,
    pub data_seq: Option<u64>,
    pub ack: Option<Ack>,
    pub addrs: Option<AddrList>,
    pub mac: Option<Mac>,
    pub rst_reason: Option<RstReason>,
}

impl Extensions {
    /// Bytes these extensions take on the wire.
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        n += self.control.map_or(0, |_| CONTROL_LEN);
        n += self.service.map_or(0, |_| SERVICE_LEN);
        n += self.data_seq.map_or(0, |_| DATA_SEQ_LEN);
        n += self.ack.map_or(0, |_| ACK_LEN);
        n += self.addrs.as_ref().map_or(0, AddrList::encoded_len);
        n += self.mac.map_or(0, |_| MAC_LEN);
        n += self.rst_reason.map_or(0, |_| RST_REASON_LEN);
        n
    }

    /// Type codes present, in canonical (encoding) order.
    pub fn present(&self) -> impl Iterator<Item = u8> {
        [
            (self.control.is_some(), ext_type::CONTROL),
            (self.service.is_some(), ext_type::SERVICE_ID),
            (self.data_seq.is_some(), ext_type::DATA_SEQ),
            (self.ack.is_some(), ext_type::ACK),
            (self.addrs.is_some(), ext_type::ADDRESS_LIST),
            (self.mac.is_some(), ext_type::MAC),
            (self.rst_reason.is_some(), ext_type::RST_REASON),
        ]
        .into_iter()
        .filter_map(|(p, t)| p.then_some(t))
    }

    /// Writes the extensions in canonical order into `out` (exactly
    /// `encoded_len()` bytes long). Fails on an invalid service prefix.
    pub(crate) fn write(&self, out: &mut [u8]) -> Result<(), WireError> {
        let mut at = 0;
        if let Some(c) = self.control {
            let e = start(out, &mut at, ext_type::CONTROL, CONTROL_LEN);
            e[2] = c.flags;
            e[4..8].copy_from_slice(&c.seq.to_be_bytes());
            e[8..12].copy_from_slice(&c.ack.to_be_bytes());
            e[12..20].copy_from_slice(&c.nonce.to_be_bytes());
        }
        if let Some(s) = self.service {
            if s.prefix_bits > (ID_BYTES * 8) as u32 {
                return Err(WireError::BadExtension(ext_type::SERVICE_ID));
            }
            let e = start(out, &mut at, ext_type::SERVICE_ID, SERVICE_LEN);
            e[2..4].copy_from_slice(&(s.prefix_bits as u16).to_be_bytes());
            e[4..36].copy_from_slice(&s.bytes);
        }
        if let Some(seq) = self.data_seq {
            let e = start(out, &mut at, ext_type::DATA_SEQ, DATA_SEQ_LEN);
            e[4..12].copy_from_slice(&seq.to_be_bytes());
        }
        if let Some(a) = self.ack {
            let e = start(out, &mut at, ext_type::ACK, ACK_LEN);
            e[4..8].copy_from_slice(&a.window.to_be_bytes());
            e[8..16].copy_from_slice(&a.ack.to_be_bytes());
        }
        if let Some(list) = &self.addrs {
            write_addrs(
                start(out, &mut at, ext_type::ADDRESS_LIST, list.encoded_len()),
                list,
            );
        }
        if let Some(m) = self.mac {
            let e = start(out, &mut at, ext_type::MAC, MAC_LEN);
            e[4..12].copy_from_slice(&m.counter.to_be_bytes());
            e[12..28].copy_from_slice(&m.tag);
        }
        if let Some(r) = self.rst_reason {
            let e = start(out, &mut at, ext_type::RST_REASON, RST_REASON_LEN);
            e[2..4].copy_from_slice(&r.code().to_be_bytes());
        }
        Ok(())
    }

    /// Parses the extension area `area` (its length a multiple of 4).
    pub(crate) fn parse(area: &[u8]) -> Result<Self, WireError> {
        let mut ext = Extensions::default();
        let mut at = 0;
        let mut count = 0;
        while at < area.len() {
            count += 1;
            if count > MAX_EXTENSIONS {
                return Err(WireError::TooManyExtensions);
            }
            let rest = &area[at..];
            // The area is a multiple of 4 long, so 2 bytes are always present.
            let (t, len) = (rest[0], usize::from(rest[1]));
            if len < 4 || len % 4 != 0 || len > rest.len() {
                return Err(WireError::ExtensionTooLong { ext_type: t, len });
            }
            ext.parse_one(t, &rest[..len])?;
            at += len;
        }
        Ok(ext)
    }

    fn parse_one(&mut self, t: u8, e: &[u8]) -> Result<(), WireError> {
        let fixed = |want: usize| {
            if e.len() == want {
                Ok(())
            } else {
                Err(WireError::BadExtension(t))
            }
        };
        match t {
            ext_type::CONTROL => {
                fixed(CONTROL_LEN)?;
                let c = Control {
                    flags: e[2],
                    seq: be_u32(&e[4..8]),
                    ack: be_u32(&e[8..12]),
                    nonce: be_u64(&e[12..20]),
                };
                set_once(&mut self.control, c, t)
            }
            ext_type::SERVICE_ID => {
                fixed(SERVICE_LEN)?;
                let prefix_bits = u32::from(u16::from_be_bytes([e[2], e[3]]));
                if prefix_bits > (ID_BYTES * 8) as u32 {
                    return Err(WireError::BadExtension(t));
                }
                let mut bytes = [0u8; ID_BYTES];
                bytes.copy_from_slice(&e[4..36]);
                set_once(&mut self.service, ServiceId { bytes, prefix_bits }, t)
            }
            ext_type::DATA_SEQ => {
                fixed(DATA_SEQ_LEN)?;
                set_once(&mut self.data_seq, be_u64(&e[4..12]), t)
            }
            ext_type::ACK => {
                fixed(ACK_LEN)?;
                let a = Ack {
                    window: be_u32(&e[4..8]),
                    ack: be_u64(&e[8..16]),
                };
                set_once(&mut self.ack, a, t)
            }
            ext_type::ADDRESS_LIST => {
                let list = parse_addrs(e)?;
                set_once(&mut self.addrs, list, t)
            }
            ext_type::MAC => {
                fixed(MAC_LEN)?;
                let mut tag = [0u8; MAC_TAG_LEN];
                tag.copy_from_slice(&e[12..28]);
                let m = Mac {
                    counter: be_u64(&e[4..12]),
                    tag,
                };
                set_once(&mut self.mac, m, t)
            }
            ext_type::RST_REASON => {
                fixed(RST_REASON_LEN)?;
                let r = RstReason::from_code(u16::from_be_bytes([e[2], e[3]]));
                set_once(&mut self.rst_reason, r, t)
            }
            unknown if unknown & CRITICAL != 0 => Err(WireError::UnknownCritical(unknown)),
            _ => Ok(()), // unknown, may be skipped
        }
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn set_once<T>(slot: &mut Option<T>, v: T, t: u8) -> Result<(), WireError> {
    if slot.is_some() {
        return Err(WireError::DuplicateExtension(t));
    }
    *slot = Some(v);
    Ok(())
}

/// Starts an extension of `len` bytes at `*at`: writes type and length,
/// zeroes the rest and returns its bytes.
fn start<'o>(out: &'o mut [u8], at: &mut usize, t: u8, len: usize) -> &'o mut [u8] {
    let e = &mut out[*at..*at + len];
    *at += len;
    e.fill(0);
    e[0] = t;
    e[1] = len as u8;
    e
}

fn write_addrs(e: &mut [u8], list: &AddrList) {
    e[2] = list.len;
    let mut at = 4;
    for a in list.as_slice() {
        let n = entry_len(a);
        let entry = &mut e[at..at + n];
        entry[2..4].copy_from_slice(&a.port().to_be_bytes());
        match a.ip() {
            IpAddr::V4(ip) => {
                entry[0] = 4;
                entry[4..8].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                entry[0] = 6;
                entry[4..20].copy_from_slice(&ip.octets());
            }
        }
        at += n;
    }
}

fn parse_addrs(e: &[u8]) -> Result<AddrList, WireError> {
    let bad = WireError::BadExtension(ext_type::ADDRESS_LIST);
    let count = usize::from(e[2]);
    if count > MAX_ADDRESSES {
        return Err(WireError::TooManyAddresses(count));
    }
    let mut list = AddrList {
        len: count as u8,
        addrs: [UNSPEC; MAX_ADDRESSES],
    };
    let mut at = 4;
    for slot in list.addrs.iter_mut().take(count) {
        let rest = e.get(at..).ok_or(bad)?;
        let (family, need) = match rest.first() {
            Some(4) => (4, 8),
            Some(6) => (6, 20),
            _ => return Err(bad),
        };
        let entry = rest.get(..need).ok_or(bad)?;
        let port = u16::from_be_bytes([entry[2], entry[3]]);
        let ip = if family == 4 {
            IpAddr::V4(Ipv4Addr::new(entry[4], entry[5], entry[6], entry[7]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&entry[4..20]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        *slot = SocketAddr::new(ip, port);
        at += need;
    }
    if at != e.len() {
        return Err(bad);
    }
    Ok(list)
}
