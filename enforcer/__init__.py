"""Kubernetes NetworkPolicy enforcer whose per-packet work runs in eBPF."""

__version__ = "0.1.0"
