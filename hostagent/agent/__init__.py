"""The `serval agent` control plane: registry link, desired table, local API, event pump.

See `hostagent/README.md` for the data flow and `docs/agent-datapath.md` for the
seam to the Rust data path.
"""
