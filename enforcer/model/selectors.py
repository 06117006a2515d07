"""metav1.LabelSelector: matchLabels and matchExpressions (In, NotIn,
Exists, DoesNotExist), with the API server's validation rules."""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Labels = Mapping[str, str]
T = TypeVar("T")


class Interner(Generic[T]):
    """Canonical instances of equal immutable values, so that the same
    selector in a thousand policies, or the same ports in a thousand pods, is
    held once. Weak: an instance no object refers to any more leaves the
    table. The key is made of the instance's fields (not the instance, which
    the table would then keep alive)."""

    def __init__(self, key: Callable[[T], Hashable]) -> None:
        self._key = key
        self._table: weakref.WeakValueDictionary[Hashable, T] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def __call__(self, obj: T) -> T:
        key = self._key(obj)
        # The common case, without the lock: WeakValueDictionary keeps its
        # weak references in .data (not in its type stubs).
        ref = self._table.data.get(key)  # type: ignore[attr-defined]
        found = ref() if ref is not None else None
        if found is not None:
            return found
        with self._lock:
            found = self._table.get(key)
            if found is None:
                self._table[key] = found = obj
        return found

    def __len__(self) -> int:
        return len(self._table)

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")


class SelectorError(ValueError):
    pass


def check_label_key(key: object, where: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key) or len(key.split("/")[0]) > 253:
        raise SelectorError(f"{where}: invalid label key {key!r}")
    return key


def check_label_value(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"{where}: invalid label value {value!r}")
    return value


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Labels) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        # NotIn: also true when the key is absent (as upstream's labels.Selector)
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True, weakref_slot=True)
class LabelSelector:
    """An empty selector (no labels, no expressions) selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def parse(cls, raw: Any, where: str) -> LabelSelector:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise SelectorError(f"{where}: must be an object, got {type(raw).__name__}")
        unknown = set(raw) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise SelectorError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        reqs: list[Requirement] = []
        match_labels = raw.get("matchLabels") or {}
        if not isinstance(match_labels, dict):
            raise SelectorError(f"{where}.matchLabels: must be a map")
        for k, v in match_labels.items():
            check_label_key(k, f"{where}.matchLabels")
            check_label_value(v, f"{where}.matchLabels[{k}]")
            reqs.append(_requirements(Requirement(k, "In", frozenset([v]))))
        exprs = raw.get("matchExpressions") or []
        if not isinstance(exprs, list):
            raise SelectorError(f"{where}.matchExpressions: must be a list")
        for i, e in enumerate(exprs):
            at = f"{where}.matchExpressions[{i}]"
            if not isinstance(e, dict):
                raise SelectorError(f"{at}: must be an object")
            unknown = set(e) - {"key", "operator", "values"}
            if unknown:
                raise SelectorError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
            key = check_label_key(e.get("key"), at)
            op = e.get("operator")
            if op not in _OPERATORS:
                raise SelectorError(f"{at}: operator must be one of {', '.join(_OPERATORS)}, got {op!r}")
            values = e.get("values") or []
            if not isinstance(values, list):
                raise SelectorError(f"{at}.values: must be a list")
            if op in ("In", "NotIn") and not values:
                raise SelectorError(f"{at}: operator {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise SelectorError(f"{at}: operator {op} takes no values")
            for v in values:
                check_label_value(v, f"{at}.values")
            reqs.append(_requirements(Requirement(key, op, frozenset(values))))
        # Canonical order so equal selectors compare and hash equal.
        return _selectors(cls(tuple(sorted(reqs, key=lambda r: (r.key, r.operator, sorted(r.values))))))

    def __str__(self) -> str:
        if self.is_empty:
            return "{}"
        parts = []
        for r in self.requirements:
            if r.operator == "In" and len(r.values) == 1:
                parts.append(f"{r.key}={next(iter(r.values))}")
            elif r.operator == "Exists":
                parts.append(r.key)
            elif r.operator == "DoesNotExist":
                parts.append(f"!{r.key}")
            else:
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(sorted(r.values))})")
        return ",".join(parts)


_requirements: Interner[Requirement] = Interner(lambda r: (r.key, r.operator, r.values))
_selectors: Interner[LabelSelector] = Interner(lambda sel: sel.requirements)
