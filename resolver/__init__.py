"""Serval resolver: coexisting discovery back-ends merged with clear precedence (filled by a later issue)."""
