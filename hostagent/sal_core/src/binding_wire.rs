//! PyO3 glue for the SAL wire format (tests and tools): frames cross as
//! plain dicts. No logic here beyond converting values; errors from the
//! codec become `ValueError` with the `WireError` message.
//!
//! Frame dict keys: `type` ("data" | "ack" | "control"), `flags`,
//! `src_flow`, `dst_flow`, `payload` (bytes), and optionally `control`
//! (dict: `flags`, `seq`, `ack`, `nonce`), `service` ((id_bytes, prefix_bits)),
//! `data_seq` (int), `ack` ((ack, window)), `addresses` (list of (ip, port)),
//! `mac` ((counter, tag_bytes)), `rst_reason` (int). Absent extensions are
//! omitted from decoded dicts.

use std::net::{IpAddr, SocketAddr};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::service_id::ServiceId;
use crate::wire::{
    self, Ack, AddrList, Control, Extensions, Frame, FrameType, Header, Mac, RstReason,
};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn type_name(t: FrameType) -> &'static str {
    match t {
        FrameType::Data => "data",
        FrameType::Ack => "ack",
        FrameType::Control => "control",
    }
}

fn parse_type(s: &str) -> PyResult<FrameType> {
    match s {
        "data" => Ok(FrameType::Data),
        "ack" => Ok(FrameType::Ack),
        "control" => Ok(FrameType::Control),
        other => Err(value_error(format!("unknown frame type {other:?}"))),
    }
}

fn get<'py, T: for<'a> FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract::<T>().map_err(Into::into)?)),
        _ => Ok(None),
    }
}

fn control_from(d: &Bound<'_, PyDict>) -> PyResult<Control> {
    Ok(Control {
        flags: get(d, "flags")?.unwrap_or(0),
        seq: get(d, "seq")?.unwrap_or(0),
        ack: get(d, "ack")?.unwrap_or(0),
        nonce: get(d, "nonce")?.unwrap_or(0),
    })
}

fn extensions_from(d: &Bound<'_, PyDict>) -> PyResult<Extensions> {
    let control = match d.get_item("control")? {
        Some(c) if !c.is_none() => Some(control_from(c.cast::<PyDict>()?)?),
        _ => None,
    };
    let service = match get::<(Vec<u8>, u32)>(d, "service")? {
        Some((bytes, prefix_bits)) => {
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| value_error("service ID must be 32 bytes"))?;
            Some(ServiceId { bytes, prefix_bits })
        }
        None => None,
    };
    let addrs = match get::<Vec<(String, u16)>>(d, "addresses")? {
        Some(list) => {
            let parsed: Result<Vec<SocketAddr>, _> = list
                .iter()
                .map(|(ip, port)| ip.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, *port)))
                .collect();
            Some(AddrList::new(&parsed.map_err(value_error)?).map_err(value_error)?)
        }
        None => None,
    };
    let mac = match get::<(u64, Vec<u8>)>(d, "mac")? {
        Some((counter, tag)) => {
            let tag: [u8; 16] = tag
                .try_into()
                .map_err(|_| value_error("MAC tag must be 16 bytes"))?;
            Some(Mac { counter, tag })
        }
        None => None,
    };
    Ok(Extensions {
        control,
        service,
        data_seq: get(d, "data_seq")?,
        ack: get::<(u64, u32)>(d, "ack")?.map(|(ack, window)| Ack { ack, window }),
        addrs,
        mac,
        rst_reason: get::<u16>(d, "rst_reason")?.map(RstReason::from_code),
    })
}

/// Encodes a frame dict (see the module docs) to bytes; `ValueError` if invalid.
#[pyfunction]
pub fn encode_frame<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyBytes>> {
    let kind: String = get(frame, "type")?.ok_or_else(|| value_error("frame needs a 'type'"))?;
    let header = Header {
        frame_type: parse_type(&kind)?,
        flags: get(frame, "flags")?.unwrap_or(0),
        src_flow: get(frame, "src_flow")?.unwrap_or(0),
        dst_flow: get(frame, "dst_flow")?.unwrap_or(0),
    };
    let payload: Vec<u8> = get(frame, "payload")?.unwrap_or_default();
    let ext = extensions_from(frame)?;
    let mut out = Vec::new();
    wire::encode(
        &Frame {
            header,
            ext,
            payload: &payload,
        },
        &mut out,
    )
    .map_err(value_error)?;
    Ok(PyBytes::new(py, &out))
}

fn frame_to_dict<'py>(py: Python<'py>, f: &Frame<'_>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", type_name(f.header.frame_type))?;
    d.set_item("flags", f.header.flags)?;
    d.set_item("src_flow", f.header.src_flow)?;
    d.set_item("dst_flow", f.header.dst_flow)?;
    d.set_item("payload", PyBytes::new(py, f.payload))?;
    let e = &f.ext;
    if let Some(c) = e.control {
        let cd = PyDict::new(py);
        cd.set_item("flags", c.flags)?;
        cd.set_item("seq", c.seq)?;
        cd.set_item("ack", c.ack)?;
        cd.set_item("nonce", c.nonce)?;
        d.set_item("control", cd)?;
    }
    if let Some(s) = e.service {
        d.set_item("service", (PyBytes::new(py, &s.bytes), s.prefix_bits))?;
    }
    if let Some(seq) = e.data_seq {
        d.set_item("data_seq", seq)?;
    }
    if let Some(a) = e.ack {
        d.set_item("ack", (a.ack, a.window))?;
    }
    if let Some(list) = &e.addrs {
        let items: Vec<(String, u16)> = list
            .as_slice()
            .iter()
            .map(|a| (a.ip().to_string(), a.port()))
            .collect();
        d.set_item("addresses", PyList::new(py, items)?)?;
    }
    if let Some(m) = e.mac {
        d.set_item("mac", (m.counter, PyBytes::new(py, &m.tag)))?;
    }
    if let Some(r) = e.rst_reason {
        d.set_item("rst_reason", r.code())?;
    }
    Ok(d)
}

/// Decodes the frame at the front of `data`: `(frame dict, bytes consumed)`;
/// `ValueError` with the wire error's message if malformed or incomplete.
#[pyfunction]
pub fn decode_frame<'py>(py: Python<'py>, data: &[u8]) -> PyResult<(Bound<'py, PyDict>, usize)> {
    let (frame, used) = wire::decode(data).map_err(value_error)?;
    Ok((frame_to_dict(py, &frame)?, used))
}

/// Registers the wire functions on `m` (call from the `_native` module init).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(decode_frame, m)?)?;
    Ok(())
}
