"""Serval registry: gRPC registration and push resolution over etcd."""

__version__ = "0.1.0"
