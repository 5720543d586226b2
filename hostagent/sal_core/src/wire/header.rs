//! The fixed 28-byte SAL header and its CRC32C.
//!
//! ```text
//!  0       1       2       3
//! +-------+-------+-------+-------+
//! |version| type  | flags | hlen  |  0   hlen = (28 + extension bytes) / 4
//! +-------+-------+-------+-------+
//! |          total length         |  4   header + extensions + payload, bytes
//! +-------------------------------+
//! |        source flow ID         |  8
//! |           (64 bits)           |
//! +-------------------------------+
//! |      destination flow ID      | 16
//! |           (64 bits)           |
//! +-------------------------------+
//! |   CRC32C(header+extensions)   | 24   computed with this field zeroed
//! +-------------------------------+
//! ```
//! All multi-byte fields are big-endian.

use super::error::WireError;

/// The only version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 28;
/// Largest header + extensions (`hlen` is a byte counting 32-bit words).
pub const MAX_HEADER_LEN: usize = 255 * 4;
/// Largest payload of one frame (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest frame.
pub const MAX_FRAME_LEN: usize = MAX_HEADER_LEN + MAX_PAYLOAD;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 24;

/// Header flag: the receiver should answer with an ACK frame at once
/// (window probe, keepalive). Other bits are reserved: sent as 0, ignored.
pub const FLAG_ACK_NOW: u8 = 0x01;

/// What a frame is for; decides which extensions it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Flow bytes: DATA SEQUENCE (+ optional ACKNOWLEDGEMENT) and a payload.
    Data = 1,
    /// Pure acknowledgement / window update: ACKNOWLEDGEMENT, no payload.
    Ack = 2,
    /// Control: CONTROL plus SERVICE ID, ACK, ADDRESS LIST, MAC, RST REASON,
    /// DATA SEQUENCE (FIN offset) as the flags need; no payload.
    Control = 3,
}

impl FrameType {
    pub fn from_u8(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(FrameType::Data),
            2 => Ok(FrameType::Ack),
            3 => Ok(FrameType::Control),
            other => Err(WireError::BadFrameType(other)),
        }
    }
}

/// The decoded fixed header (lengths are derived when encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub frame_type: FrameType,
    pub flags: u8,
    pub src_flow: u64,
    pub dst_flow: u64,
}

/// Lengths announced by the first 8 bytes of a frame, checked against the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lengths {
    pub header_len: usize,
    pub total_len: usize,
}

/// Reads version and lengths from `buf[..8]` (caller guarantees 8 bytes).
pub(crate) fn read_lengths(buf: &[u8]) -> Result<Lengths, WireError> {
    if buf[0] != VERSION {
        return Err(WireError::BadVersion(buf[0]));
    }
    let header_len = usize::from(buf[3]) * 4;
    let total_len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if header_len < HEADER_LEN || total_len < header_len || total_len > MAX_FRAME_LEN {
        return Err(WireError::BadLength {
            header_len,
            total_len,
        });
    }
    Ok(Lengths {
        header_len,
        total_len,
    })
}

/// Writes the fixed header into `out[..28]` with a zero checksum.
pub(crate) fn write_header(out: &mut [u8], h: &Header, header_len: usize, total_len: usize) {
    out[0] = VERSION;
    out[1] = h.frame_type as u8;
    out[2] = h.flags;
    out[3] = (header_len / 4) as u8;
    out[4..8].copy_from_slice(&(total_len as u32).to_be_bytes());
    out[8..16].copy_from_slice(&h.src_flow.to_be_bytes());
    out[16..24].copy_from_slice(&h.dst_flow.to_be_bytes());
    out[24..28].fill(0);
}

/// Reads the fixed header fields (caller guarantees 28 bytes).
pub(crate) fn read_header(buf: &[u8]) -> Result<Header, WireError> {
    Ok(Header {
        frame_type: FrameType::from_u8(buf[1])?,
        flags: buf[2],
        src_flow: be_u64(&buf[8..16]),
        dst_flow: be_u64(&buf[16..24]),
    })
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// CRC32C (Castagnoli, reflected, init and final XOR 0xFFFFFFFF) of `head`
/// with bytes 24..28 (the checksum field) taken as zero.
pub fn header_checksum(head: &[u8]) -> u32 {
    let mut crc = !0u32;
    for (i, &b) in head.iter().enumerate() {
        let b = if (CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4).contains(&i) {
            0
        } else {
            b
        };
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Plain CRC32C of `data` (exposed for the test vector).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32C_TABLE: [u32; 256] = make_table(0x82F6_3B78);

const fn make_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (RFC 3720 appendix B.4 family).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn checksum_ignores_its_own_field() {
        let mut h = [7u8; 28];
        let a = header_checksum(&h);
        h[24..28].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(header_checksum(&h), a);
    }

    #[test]
    fn lengths_are_checked() {
        let mut b = [0u8; 8];
        b[0] = VERSION;
        b[3] = 7;
        b[4..8].copy_from_slice(&28u32.to_be_bytes());
        assert!(read_lengths(&b).is_ok());
        b[3] = 6;
        assert!(matches!(read_lengths(&b), Err(WireError::BadLength { .. })));
        b[3] = 7;
        b[4..8].copy_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(read_lengths(&b), Err(WireError::BadLength { .. })));
        b[0] = 2;
        assert_eq!(read_lengths(&b), Err(WireError::BadVersion(2)));
    }
}
