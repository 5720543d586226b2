"""The resolver's discovery back-ends, each a `resolver.model.Backend`:

- `registry`: the registry's watch stream (`RegistryBackend`);
- `static`: a TOML file, reloaded on change (`StaticBackend`);
- `lan`: multicast announcements on an ad-hoc network (`LanBackend`, `LanAnnouncer`);
- `dns`: SRV/A/AAAA records of an existing DNS server (`DnsBackend`).

`state.Published` is the part they share: the current snapshot, its revision and
the listeners.
"""
