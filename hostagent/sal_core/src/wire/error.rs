//! Typed errors for frame encoding and decoding.

use std::fmt;

/// Why bytes could not be decoded as a frame, or a frame could not be encoded.
///
/// Decoding never panics: every malformed input maps to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the frame (or its header) needs.
    Truncated { need: usize, have: usize },
    /// The version byte is not one this code speaks.
    BadVersion(u8),
    /// The frame type byte is not defined.
    BadFrameType(u8),
    /// Header length or total length is inconsistent or over the limits.
    BadLength { header_len: usize, total_len: usize },
    /// A datagram's length differs from the total length in its header.
    LengthMismatch { header: usize, datagram: usize },
    /// CRC32C over header and extensions does not match.
    BadChecksum { expected: u32, actual: u32 },
    /// More than [`super::MAX_EXTENSIONS`] extensions.
    TooManyExtensions,
    /// An extension's length is below 4, not a multiple of 4 or runs past the extension area.
    ExtensionTooLong { ext_type: u8, len: usize },
    /// A known extension has the wrong length or an invalid field.
    BadExtension(u8),
    /// A known extension type occurs twice.
    DuplicateExtension(u8),
    /// An unknown extension with the must-understand bit set.
    UnknownCritical(u8),
    /// The frame type requires an extension that is absent (its type code).
    MissingExtension(u8),
    /// An extension that this frame type may not carry (its type code).
    UnexpectedExtension(u8),
    /// A payload on a frame type that carries none, or a payload over the limit.
    BadPayload { len: usize },
    /// More addresses than [`super::MAX_ADDRESSES`] in an address list.
    TooManyAddresses(usize),
    /// The output buffer is too small (encoding only).
    BufferTooSmall { need: usize, have: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::Truncated { need, have } => {
                write!(f, "truncated frame: need {need} bytes, have {have}")
            }
            WireError::BadVersion(v) => write!(f, "unsupported SAL version {v}"),
            WireError::BadFrameType(t) => write!(f, "unknown frame type {t}"),
            WireError::BadLength {
                header_len,
                total_len,
            } => write!(
                f,
                "bad lengths: header {header_len} bytes, total {total_len} bytes"
            ),
            WireError::LengthMismatch { header, datagram } => write!(
                f,
                "datagram is {datagram} bytes but its header says {header}"
            ),
            WireError::BadChecksum { expected, actual } => write!(
                f,
                "bad checksum: header says {expected:#010x}, computed {actual:#010x}"
            ),
            WireError::TooManyExtensions => {
                write!(f, "more than {} extensions", super::MAX_EXTENSIONS)
            }
            WireError::ExtensionTooLong { ext_type, len } => {
                write!(f, "extension {ext_type:#04x} has invalid length {len}")
            }
            WireError::BadExtension(t) => write!(f, "malformed extension {t:#04x}"),
            WireError::DuplicateExtension(t) => write!(f, "duplicate extension {t:#04x}"),
            WireError::UnknownCritical(t) => {
                write!(f, "unknown must-understand extension {t:#04x}")
            }
            WireError::MissingExtension(t) => write!(f, "required extension {t:#04x} missing"),
            WireError::UnexpectedExtension(t) => {
                write!(f, "extension {t:#04x} not allowed on this frame type")
            }
            WireError::BadPayload { len } => {
                write!(f, "payload of {len} bytes not allowed on this frame")
            }
            WireError::TooManyAddresses(n) => {
                write!(f, "{n} addresses, more than {}", super::MAX_ADDRESSES)
            }
            WireError::BufferTooSmall { need, have } => {
                write!(f, "output buffer too small: need {need} bytes, have {have}")
            }
        }
    }
}

impl std::error::Error for WireError {}
