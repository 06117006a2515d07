"""Error taxonomy. Every error the enforcer raises on purpose is an
EnforcerError; callers catch the narrowest class that fits.

- ConfigError: the user's configuration is wrong; fix it and retry.
- DatapathError: the kernel side failed (compile, load, attach, map ops).
  - BuildError: the BPF C did not compile or the verifier refused it.
  - PinError: pinned state exists but does not fit (layout or size changed).
  - MapError: a map operation failed (MapFullError when out of room).
  - AttachError: tc/clsact attach or detach failed.
- InvalidObjectError: one Kubernetes object cannot be enforced as written;
  it names the object and affects nothing else.
- HistoryError: the flow history cannot be kept; enforcement goes on
  without it.
"""

from __future__ import annotations


class EnforcerError(Exception):
    """Base of every deliberate enforcer error."""


class ConfigError(EnforcerError):
    """Invalid configuration."""


class DatapathError(EnforcerError):
    """The kernel datapath failed."""


class BuildError(DatapathError):
    """BPF source did not compile or did not pass the verifier."""


class PinError(DatapathError):
    """Pinned maps exist but cannot be reused."""


class MapError(DatapathError):
    """A BPF map operation failed."""

    def __init__(self, map_name: str, op: str, errno_: int, detail: str = "") -> None:
        import os

        self.map_name = map_name
        self.op = op
        self.errno = errno_
        msg = f"map {map_name}: {op} failed: {os.strerror(errno_)}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class MapFullError(MapError):
    """A map has no room for a new entry."""


class AttachError(DatapathError):
    """Attaching or detaching a tc program failed."""


class InvalidObjectError(EnforcerError):
    """A Kubernetes object that cannot be enforced as written."""

    def __init__(self, kind: str, namespace: str | None, name: str, reason: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.reason = reason
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where}: {reason}")


class HistoryError(EnforcerError):
    """The flow history cannot be kept (its file cannot be opened or
    created); the daemon enforces without it."""
