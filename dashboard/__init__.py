"""Serval's ops dashboard: a live web view of services, agents and the etcd cluster (README.md)."""
