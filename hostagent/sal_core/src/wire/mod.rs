//! SAL wire format (version 1): a fixed 28-byte header, TLV extensions and
//! a payload. Specified in `docs/sal-wire.md`; this module is its reference.
//!
//! - [`header`]: fixed header layout, limits, CRC32C.
//! - [`extensions`]: the TLV extensions and their rules.
//! - [`frame`]: borrowed and owned frames, which extensions each type carries.
//! - [`codec`]: encode into a `Vec` or slice; decode from a datagram or the
//!   front of a byte-stream buffer (incremental).
//! - [`error`]: the error type, [`WireError`].
//!
//! Decoding never panics and allocates nothing: the payload is borrowed and
//! every list is bounded and stored inline.

pub mod codec;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod header;

#[cfg(test)]
mod examples;
#[cfg(test)]
mod tests;

pub use codec::{
    decode, decode_datagram, decode_stream, encode, encode_head, encode_into, encoded_len, Decoded,
};
pub use error::WireError;
pub use extensions::{
    ctl, ext_type, Ack, AddrList, Control, Extensions, Mac, RstReason, MAX_ADDRESSES,
    MAX_EXTENSIONS,
};
pub use frame::{Frame, OwnedFrame};
pub use header::{
    FrameType, Header, FLAG_ACK_NOW, HEADER_LEN, MAX_FRAME_LEN, MAX_HEADER_LEN, MAX_PAYLOAD,
    VERSION,
};
