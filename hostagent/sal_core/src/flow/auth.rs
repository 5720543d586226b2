//! Flow key and control-frame MACs (the RSYN proof, docs/sal-flow.md §4).
//!
//! - Key: `K = HMAC-SHA-256(key = "serval-sal-v1 flow key",
//!   msg = nonce_c || nonce_s || flow_c || flow_s)`, all 8-byte big-endian;
//!   `c` is the initiator (SYN sender), `s` the acceptor.
//! - Tag: `HMAC-SHA-256(K, "serval-sal-v1 mac" || dir || F)` truncated to
//!   16 bytes, where `dir` is 0 from the initiator and 1 from the acceptor and
//!   `F` is the canonical encoding of the frame's header and known
//!   extensions with the checksum field and the MAC tag zeroed (the MAC
//!   counter is included). It thus binds flow IDs, direction, counter,
//!   control flags and sequence numbers, data ack, FIN offset, addresses.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::wire::{self, Frame, Mac, OwnedFrame, MAX_HEADER_LEN};

type HmacSha256 = Hmac<Sha256>;

const KEY_LABEL: &[u8] = b"serval-sal-v1 flow key";
const MAC_LABEL: &[u8] = b"serval-sal-v1 mac";

/// Which end sent a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromInitiator = 0,
    FromAcceptor = 1,
}

/// The per-flow secret both ends derive at set-up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowKey([u8; 32]);

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowKey(..)")
    }
}

impl FlowKey {
    /// Derives the key from both nonces and both flow IDs.
    pub fn derive(nonce_c: u64, nonce_s: u64, flow_c: u64, flow_s: u64) -> Self {
        let mut m = HmacSha256::new_from_slice(KEY_LABEL).expect("HMAC takes any key length");
        for v in [nonce_c, nonce_s, flow_c, flow_s] {
            m.update(&v.to_be_bytes());
        }
        FlowKey(m.finalize().into_bytes().into())
    }

    fn hmac_of(&self, dir: Direction, frame: &Frame<'_>) -> Option<HmacSha256> {
        let mut canon = *frame;
        let counter = frame.ext.mac.map_or(0, |m| m.counter);
        canon.ext.mac = Some(Mac {
            counter,
            tag: [0; 16],
        });
        canon.payload = &[];
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = wire::encode_into(&canon, &mut buf).ok()?;
        buf[wire::header::CHECKSUM_OFFSET..wire::header::CHECKSUM_OFFSET + 4].fill(0);
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(MAC_LABEL);
        m.update(&[dir as u8]);
        m.update(&buf[..n]);
        Some(m)
    }

    /// Sets `frame`'s MAC extension to `counter` and the matching tag.
    pub fn sign(&self, dir: Direction, frame: &mut OwnedFrame, counter: u64) {
        frame.ext.mac = Some(Mac {
            counter,
            tag: [0; 16],
        });
        let tag = self
            .hmac_of(dir, &frame.as_frame())
            .map(|m| m.finalize().into_bytes());
        if let (Some(tag), Some(mac)) = (tag, frame.ext.mac.as_mut()) {
            mac.tag.copy_from_slice(&tag[..16]);
        }
    }

    /// True when `frame` carries a MAC extension whose tag is right for
    /// `dir` (constant-time comparison). Freshness is the caller's check.
    pub fn verify(&self, dir: Direction, frame: &Frame<'_>) -> bool {
        let Some(mac) = frame.ext.mac else {
            return false;
        };
        match self.hmac_of(dir, frame) {
            Some(m) => m.verify_truncated_left(&mac.tag).is_ok(),
            None => false,
        }
    }
}
