"""Stable numeric ids for identities and rules.

Ids are derived from a hash of what they name, so a restarted daemon (or
another node) gives the same content the same number without shared state;
the rare collision is resolved by probing and is only stable within a
process, which the ordered diff tolerates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Hashable)


def canonical(value: Any) -> Any:
    """A form of value whose repr() is the same in every process: sets are
    sorted (their iteration order follows the per-process string hash
    seed), dataclasses become (name, fields), addresses strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple(canonical(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (set, frozenset)):
        return ("set",) + tuple(sorted((canonical(v) for v in value), key=repr))
    if isinstance(value, (tuple, list)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


class StableIds(Generic[T]):
    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.span = last - first + 1
        self._by_key: dict[T, int] = {}
        self._by_id: dict[int, T] = {}

    def _hash(self, key: T) -> int:
        digest = hashlib.blake2b(repr(canonical(key)).encode(), digest_size=8).digest()
        return self.first + int.from_bytes(digest, "big") % self.span

    def get(self, key: T) -> int:
        found = self._by_key.get(key)
        if found is not None:
            return found
        candidate = self._hash(key)
        while candidate in self._by_id:
            candidate = self.first + (candidate - self.first + 1) % self.span
        self._by_key[key] = candidate
        self._by_id[candidate] = key
        return candidate

    def forget(self, key: T) -> None:
        """Forget one key (its content is gone); no-op when unknown."""
        ident = self._by_key.pop(key, None)
        if ident is not None:
            del self._by_id[ident]

    def retain(self, keys: set[T]) -> None:
        """Forget every key not in `keys` (ids of vanished content)."""
        for k in [k for k in self._by_key if k not in keys]:
            del self._by_id[self._by_key.pop(k)]


class EndpointIds:
    """Endpoint ids (1..max-1, they index per-CPU counters) per pod uid;
    lowest free id first; seeded from the pinned endpoints map on restart."""

    def __init__(self, max_id: int) -> None:
        self.max_id = max_id
        self._by_pod: dict[str, int] = {}

    def seed(self, pod_uid: str, endpoint_id: int) -> None:
        if 0 < endpoint_id < self.max_id and endpoint_id not in self._by_pod.values():
            self._by_pod[pod_uid] = endpoint_id

    def get(self, pod_uid: str) -> int | None:
        found = self._by_pod.get(pod_uid)
        if found is not None:
            return found
        used = set(self._by_pod.values())
        for candidate in range(1, self.max_id):
            if candidate not in used:
                self._by_pod[pod_uid] = candidate
                return candidate
        return None  # exhausted: the caller reports it

    def retain(self, pod_uids: set[str]) -> list[int]:
        """Release ids of pods that are gone; returns the released ids."""
        gone = [u for u in self._by_pod if u not in pod_uids]
        return [self._by_pod.pop(u) for u in gone]

    def items(self) -> dict[str, int]:
        return dict(self._by_pod)
