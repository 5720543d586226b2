"""DNS bridge: serves the registry to legacy clients over DNS (filled by a later issue)."""
