"""Domain errors of the registry. The API layer maps each to one gRPC status code.

Every error carries a message meant for the operator: it names the offending
field or object and says what is wrong.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of all registry domain errors."""


class InvalidArgument(RegistryError):
    """The request is malformed (→ INVALID_ARGUMENT)."""


class NotFound(RegistryError):
    """The instance, service or lease does not exist (→ NOT_FOUND)."""


class AlreadyExists(RegistryError):
    """A conflicting object exists (→ ALREADY_EXISTS).

    Either the name's service ID is owned by another name, or the instance is
    held by another lease.
    """


class Unavailable(RegistryError):
    """etcd cannot be reached or has no leader; the request was not applied (→ UNAVAILABLE)."""


class Aborted(RegistryError):
    """A compare-and-swap kept losing to concurrent writers; safe to retry (→ ABORTED)."""
