"""v1 Namespace: its name and labels (namespace selectors match them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .meta import labels_of, meta_of, resource_version_of


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]
    resource_version: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Namespace:
        _, name = meta_of(raw, "Namespace", namespaced=False)
        labels = labels_of(raw, "Namespace", None, name)
        # The API server sets this label on every namespace (1.21+); manifests
        # written by hand may lack it, and policies rely on it.
        labels["kubernetes.io/metadata.name"] = name
        return cls(name, labels, resource_version_of(raw))
