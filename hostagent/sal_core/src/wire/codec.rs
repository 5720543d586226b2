//! Encoding into buffers and decoding from byte streams and datagrams.

use super::error::WireError;
use super::extensions::Extensions;
use super::frame::{check_rules, Frame};
use super::header::{
    header_checksum, read_header, read_lengths, write_header, CHECKSUM_OFFSET, HEADER_LEN,
    MAX_HEADER_LEN,
};

/// Bytes needed before the total length of a frame is known.
pub const PREFIX_LEN: usize = 8;

/// Result of [`decode_stream`] on the front of a byte-stream buffer.
// The decoded frame is returned inline on purpose: decoding never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The buffer holds less than one frame; at least this many bytes in
    /// total are needed before calling again.
    NeedMore(usize),
    /// A frame and the bytes it used at the front of the buffer.
    Frame(Frame<'a>, usize),
}

/// Bytes `frame` takes on the wire, or why it cannot be encoded.
pub fn encoded_len(frame: &Frame<'_>) -> Result<usize, WireError> {
    check_rules(frame.header.frame_type, &frame.ext, frame.payload.len())?;
    let head = HEADER_LEN + frame.ext.encoded_len();
    if head > MAX_HEADER_LEN {
        return Err(WireError::BadLength {
            header_len: head,
            total_len: head + frame.payload.len(),
        });
    }
    Ok(head + frame.payload.len())
}

/// Encodes `frame` into the front of `out`; returns the bytes written.
pub fn encode_into(frame: &Frame<'_>, out: &mut [u8]) -> Result<usize, WireError> {
    let total = encoded_len(frame)?;
    if out.len() < total {
        return Err(WireError::BufferTooSmall {
            need: total,
            have: out.len(),
        });
    }
    let head = total - frame.payload.len();
    write_head(frame, &mut out[..head], total)?;
    out[head..total].copy_from_slice(frame.payload);
    Ok(total)
}

/// Appends the encoding of `frame` to `out`; returns the bytes appended.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<usize, WireError> {
    out.reserve(encoded_len(frame)?);
    let head = encode_head(frame, out)?;
    out.extend_from_slice(frame.payload);
    Ok(head + frame.payload.len())
}

/// Appends the encoding of `frame` *without its payload* to `out` (header
/// and extensions, whose lengths and checksum cover the payload); returns
/// the bytes appended. Followed on the wire by `frame.payload`, this is
/// exactly [`encode`]'s output: lets a sender write the payload from where
/// it already is (e.g. with `writev`) instead of copying it.
pub fn encode_head(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let total = encoded_len(frame)?;
    let head = total - frame.payload.len();
    let mut buf = [0u8; MAX_HEADER_LEN];
    write_head(frame, &mut buf[..head], total)?;
    out.extend_from_slice(&buf[..head]);
    Ok(head)
}

/// Writes header and extensions into `out` (exactly their length) and the checksum.
fn write_head(frame: &Frame<'_>, out: &mut [u8], total: usize) -> Result<(), WireError> {
    write_header(out, &frame.header, out.len(), total);
    frame.ext.write(&mut out[HEADER_LEN..])?;
    let crc = header_checksum(out);
    out[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Decodes one frame from the front of `buf`; returns it and the bytes it used.
/// `Truncated` when `buf` is shorter than the frame.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), WireError> {
    match decode_stream(buf)? {
        Decoded::Frame(f, used) => Ok((f, used)),
        Decoded::NeedMore(need) => Err(WireError::Truncated {
            need,
            have: buf.len(),
        }),
    }
}

/// Decodes a datagram that must hold exactly one frame.
pub fn decode_datagram(buf: &[u8]) -> Result<Frame<'_>, WireError> {
    let (frame, used) = decode(buf)?;
    if used != buf.len() {
        return Err(WireError::LengthMismatch {
            header: used,
            datagram: buf.len(),
        });
    }
    Ok(frame)
}

/// Streaming decode: a frame at the front of `buf`, "need more bytes", or
/// an error (after which the stream cannot be re-synchronised and should be
/// closed). Errors in the first 8 bytes are reported as soon as they arrive.
pub fn decode_stream(buf: &[u8]) -> Result<Decoded<'_>, WireError> {
    if buf.len() < PREFIX_LEN {
        if let Some(&v) = buf.first() {
            if v != super::header::VERSION {
                return Err(WireError::BadVersion(v));
            }
        }
        return Ok(Decoded::NeedMore(PREFIX_LEN));
    }
    let lens = read_lengths(buf)?;
    if buf.len() < lens.total_len {
        return Ok(Decoded::NeedMore(lens.total_len));
    }
    let head = &buf[..lens.header_len];
    let expected = u32::from_be_bytes([head[24], head[25], head[26], head[27]]);
    let actual = header_checksum(head);
    if expected != actual {
        return Err(WireError::BadChecksum { expected, actual });
    }
    let header = read_header(head)?;
    let ext = Extensions::parse(&head[HEADER_LEN..])?;
    let payload = &buf[lens.header_len..lens.total_len];
    check_rules(header.frame_type, &ext, payload.len())?;
    Ok(Decoded::Frame(
        Frame {
            header,
            ext,
            payload,
        },
        lens.total_len,
    ))
}
