"""Typed Python face of the Rust SAL core (`_native`, built by maturin).

Only this package imports `_native`; everything else imports from here.
"""

from __future__ import annotations

from hostagent.sal_core import _native


def version() -> str:
    """Version of the compiled SAL core."""
    return _native.version()


def service_id(name: str) -> tuple[bytes, int]:
    """Service ID of `name` as ``(32 raw bytes, prefix bits)``; `ValueError` if invalid.

    Mirrors `registry.names.service_id` (same test vectors).
    """
    return _native.service_id(name)


__all__ = ["service_id", "version"]
