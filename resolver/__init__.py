"""Serval resolver: coexisting discovery back-ends (`resolver.backends`) merged with a clear
precedence and source attribution (`resolver.merge`) into the `View` of `resolver.model`."""
