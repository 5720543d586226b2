"""DNS bridge: authoritative DNS for the service zone, answered from the resolver's view (`README.md`)."""
