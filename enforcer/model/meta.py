"""What every kind shares: object metadata read and checked as the API
server would (name, namespace, labels, resourceVersion), addresses, and the
protocols and port names Kubernetes accepts."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidObjectError
from .selectors import SelectorError, check_label_key, check_label_value

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def meta_of(raw: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str | None, str]:
    meta = raw.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InvalidObjectError(kind, None, "<unnamed>", "metadata.name is missing")
    ns = meta.get("namespace", "default") if namespaced else None
    if namespaced and (not isinstance(ns, str) or not ns):
        raise InvalidObjectError(kind, None, meta["name"], "metadata.namespace is invalid")
    return ns, meta["name"]


def labels_of(raw: Mapping[str, Any], kind: str, ns: str | None, name: str) -> dict[str, str]:
    labels = (raw.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict):
        raise InvalidObjectError(kind, ns, name, "metadata.labels must be a map")
    try:
        for k, v in labels.items():
            check_label_key(k, "metadata.labels")
            check_label_value(v, f"metadata.labels[{k}]")
    except SelectorError as e:
        raise InvalidObjectError(kind, ns, name, str(e)) from e
    return dict(labels)


# A NetworkPolicy or cluster policy annotated `enforcer.dev/audit: "true"` is
# compiled and judged but not enforced: what it alone would drop passes and
# is reported as an audit verdict (docs: README, "Rolling out policy safely").
AUDIT_ANNOTATION = "enforcer.dev/audit"


def audit_of(raw: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether the object asks to be audited, and what is wrong with the
    annotation if anything: a value other than "true" or "false" is a
    mistake, and the object is enforced (the reading that opens nothing)."""
    annotations = (raw.get("metadata") or {}).get("annotations")
    if not isinstance(annotations, dict):
        return False, None if annotations is None else "metadata.annotations must be a map"
    value = annotations.get(AUDIT_ANNOTATION)
    if value is None or value == "false":
        return False, None
    if value == "true":
        return True, None
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "\u2026"
    return False, (f'metadata.annotations[{AUDIT_ANNOTATION}]: expected "true" or "false", got {shown} '
                   f"(enforced, not audited)")


def resource_version_of(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("resourceVersion") or "")


def addresses_of(raw: Any, kind: str, ns: str | None, name: str, field: str) -> tuple[IPAddress, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidObjectError(kind, ns, name, f"{field}: must be a list")
    out: list[IPAddress] = []
    for ip in raw:
        try:
            addr = ipaddress.ip_address(ip)
        except (ValueError, TypeError) as e:
            raise InvalidObjectError(kind, ns, name, f"{field}: invalid address {ip!r}") from e
        if addr not in out:
            out.append(addr)
    return tuple(out)


def check_api_version(raw: Mapping[str, Any], kind: str, supported: str) -> None:
    """Another version of the kind has other fields: never read it as this one."""
    api = raw.get("apiVersion")
    if api not in (None, supported):
        meta = raw.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        raise InvalidObjectError(kind, meta.get("namespace"), meta.get("name", "<unnamed>"),
                                 f"unsupported apiVersion {api!r}")
