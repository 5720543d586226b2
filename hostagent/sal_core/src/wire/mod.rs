//! SAL wire format: header and extensions (filled by issue 3).
