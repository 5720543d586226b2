//! Frames: header + extensions + payload, and the per-type extension rules.

use super::error::WireError;
use super::extensions::{ext_type, Extensions};
use super::header::{FrameType, Header, MAX_PAYLOAD};

/// A decoded frame borrowing its payload from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub ext: Extensions,
    pub payload: &'a [u8],
}

/// A frame that owns its payload (what the flow machine emits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedFrame {
    pub header: Header,
    pub ext: Extensions,
    pub payload: Vec<u8>,
}

impl<'a> Frame<'a> {
    pub fn to_owned_frame(&self) -> OwnedFrame {
        OwnedFrame {
            header: self.header,
            ext: self.ext,
            payload: self.payload.to_vec(),
        }
    }
}

impl OwnedFrame {
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            header: self.header,
            ext: self.ext,
            payload: &self.payload,
        }
    }
}

/// Which extensions a frame type requires and which it may carry
/// (unknown, non-critical extensions may ride on any frame).
struct Rule {
    required: &'static [u8],
    allowed: &'static [u8],
    payload: bool,
}

const DATA_RULE: Rule = Rule {
    required: &[ext_type::DATA_SEQ],
    allowed: &[ext_type::DATA_SEQ, ext_type::ACK],
    payload: true,
};
const ACK_RULE: Rule = Rule {
    required: &[ext_type::ACK],
    allowed: &[ext_type::ACK],
    payload: false,
};
const CONTROL_RULE: Rule = Rule {
    required: &[ext_type::CONTROL],
    allowed: &[
        ext_type::CONTROL,
        ext_type::SERVICE_ID,
        ext_type::DATA_SEQ,
        ext_type::ACK,
        ext_type::ADDRESS_LIST,
        ext_type::MAC,
        ext_type::RST_REASON,
    ],
    payload: false,
};

fn rule(t: FrameType) -> &'static Rule {
    match t {
        FrameType::Data => &DATA_RULE,
        FrameType::Ack => &ACK_RULE,
        FrameType::Control => &CONTROL_RULE,
    }
}

/// Checks the extension and payload rules of the frame's type.
pub(crate) fn check_rules(
    t: FrameType,
    ext: &Extensions,
    payload_len: usize,
) -> Result<(), WireError> {
    let r = rule(t);
    for present in ext.present() {
        if !r.allowed.contains(&present) {
            return Err(WireError::UnexpectedExtension(present));
        }
    }
    for &need in r.required {
        if !ext.present().any(|p| p == need) {
            return Err(WireError::MissingExtension(need));
        }
    }
    if (!r.payload && payload_len > 0) || payload_len > MAX_PAYLOAD {
        return Err(WireError::BadPayload { len: payload_len });
    }
    Ok(())
}
