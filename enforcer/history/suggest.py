"""Least-privilege NetworkPolicies from a namespace's flow history.

Per workload (a distinct set of stable labels among the namespace's local
pods) one policy selecting it, isolating it both ways, and allowing
exactly the peers and ports its pods were seen to use: ingress from what
reached them, egress to what they reached, plus DNS to kube-dns (lookups
may have been cached all through the window). A namespace default deny
gives pods no flow was seen for nothing. Only traffic that worked counts:
flows policy in force denied stay denied; flows an audited policy would
have dropped did happen, so they are allowed.

How peers are named:
  a pod of the same namespace     podSelector with its stable labels
  a pod of another namespace      the same, with a namespaceSelector on
                                  kubernetes.io/metadata.name
  an address outside the pods     ipBlock of that one address (/32, /128)
  this node (kubelet probes)      nothing: the node always reaches its pods

A selector matches every pod carrying its labels, observed or not. A
workload whose labels are a subset of another's would also select the
other's pods, so its selector excludes the keys only those others have
(DoesNotExist). What NetworkPolicy cannot say (ICMP alone, port 0) is left
out and noted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..model.meta import AUDIT_ANNOTATION
from .rows import (
    EGRESS,
    HOST,
    INGRESS,
    PASSED,
    POD,
    PORTED_PROTOCOLS,
    FlowRow,
    Labels,
    labels_json,
    labels_text,
)

SUGGESTED_LABEL = "enforcer.dev/suggested"  # kubectl delete networkpolicy -l enforcer.dev/suggested=true
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_NAMESPACE = "kube-system"
DNS_LABELS: Labels = (("k8s-app", "kube-dns"),)
DNS_PORTS = (("UDP", 53), ("TCP", 53))
DEFAULT_DENY_NAME = "suggested-default-deny"
NAME_PREFIX = "suggested-"
SLUG_MAX = 40  # of a policy name's label part; a hash follows when it is cut or taken

Port = tuple[str, int]  # (protocol, port)


@dataclass(frozen=True, order=True)
class PeerRef:
    """A peer as a rule names it: a pod selector in a namespace, or an address."""

    namespace: str = ""   # pods
    labels: Labels = ()   # pods
    address: str = ""     # outside the pods

    @classmethod
    def of(cls, row: FlowRow) -> PeerRef:
        k = row.key
        return cls(k.peer_namespace, k.peer_labels) if k.peer_kind == POD else cls(address=k.peer_address)

    def manifest(self, namespace: str) -> dict[str, Any]:
        if self.address:
            ip = ipaddress.ip_address(self.address)
            return {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}
        pods = {"podSelector": {"matchLabels": dict(self.labels)} if self.labels else {}}
        if self.namespace == namespace:
            return pods
        return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}}} | pods

    def text(self) -> str:
        return self.address or f"{self.namespace} {labels_text(self.labels)}"


DNS_PEER = PeerRef(DNS_NAMESPACE, DNS_LABELS)


@dataclass
class Workload:
    labels: Labels
    pods: set[str] = field(default_factory=set)
    ingress: dict[PeerRef, set[Port]] = field(default_factory=dict)
    egress: dict[PeerRef, set[Port]] = field(default_factory=dict)


@dataclass(frozen=True)
class Suggestion:
    namespace: str
    policies: list[dict[str, Any]]
    notes: list[str]  # what the policies leave out or widen, for a reviewer


def covered_by_dns_rule(peer: PeerRef, port: Port) -> bool:
    return (peer.namespace == DNS_NAMESPACE and set(DNS_LABELS) <= set(peer.labels) and port in DNS_PORTS
            and not peer.address)


def suggest(rows: Iterable[FlowRow], namespace: str, *, audit: bool = True) -> Suggestion:
    """The policies for namespace from rows (several nodes' histories merged
    or not; rows of other namespaces are ignored). audit: every object
    carries the audit annotation, to be applied in audit mode first."""
    local = [r for r in rows if r.key.namespace == namespace]
    notes: set[str] = set()
    workloads: dict[Labels, Workload] = {}
    label_sets = {r.key.labels for r in local}  # every local pod seen, whatever its flows' verdicts
    for row in local:
        k = row.key
        if k.verdict not in PASSED or k.peer_kind == HOST:
            continue  # denied traffic stays denied; the node reaches its pods anyway
        workload = workloads.setdefault(k.labels, Workload(k.labels))
        workload.pods.add(k.pod)
        peer = PeerRef.of(row)
        if k.protocol not in PORTED_PROTOCOLS or not k.port:
            notes.add(f"{k.namespace}/{k.pod} {k.direction} {k.protocol}{f'/{k.port}' if k.port else ''} "
                      f"{'from' if k.direction == INGRESS else 'to'} {peer.text()}: NetworkPolicy cannot allow it "
                      "without allowing every protocol and port of that peer; left out")
            continue
        if k.peer_kind == POD and not k.peer_labels:
            notes.add(f"peer pods of {k.peer_namespace} without stable labels: selected as every pod of "
                      f"{k.peer_namespace} (label them to narrow it)")
        port = (k.protocol, k.port)
        if k.direction == EGRESS and covered_by_dns_rule(peer, port):
            continue
        (workload.ingress if k.direction == INGRESS else workload.egress).setdefault(peer, set()).add(port)
    names = _names(sorted(workloads))
    policies = [_policy(namespace, DEFAULT_DENY_NAME, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
                        audit)]
    for labels in sorted(workloads, key=lambda ls: names[ls]):
        w = workloads[labels]
        if not labels:
            notes.add(f"pods of {namespace} without stable labels ({', '.join(sorted(w.pods))}): selected by "
                      "lacking the other workloads' label keys (label them to select them exactly)")
        spec: dict[str, Any] = {"podSelector": _selector(labels, label_sets), "policyTypes": ["Ingress", "Egress"]}
        if w.ingress:
            spec["ingress"] = _rules(w.ingress, "from", namespace)
        spec["egress"] = _rules(w.egress, "to", namespace) + [
            {"to": [DNS_PEER.manifest(namespace)], "ports": [{"protocol": p, "port": n} for p, n in DNS_PORTS]}]
        policies.append(_policy(namespace, names[labels], spec, audit))
    return Suggestion(namespace, policies, sorted(notes))


def _rules(peers: dict[PeerRef, set[Port]], field_name: str, namespace: str) -> list[dict[str, Any]]:
    """One rule per distinct port set, naming every peer seen on exactly
    those ports: the rule allows its peers x its ports, all of it seen."""
    by_ports: dict[tuple[Port, ...], list[PeerRef]] = {}
    for peer, ports in peers.items():
        by_ports.setdefault(tuple(sorted(ports)), []).append(peer)
    return [{field_name: [p.manifest(namespace) for p in sorted(group)],
             "ports": [{"protocol": proto, "port": port} for proto, port in ports]}
            for ports, group in sorted(by_ports.items())]


def _selector(labels: Labels, label_sets: Iterable[Labels]) -> dict[str, Any]:
    """labels, minus the pods of the workloads whose labels hold all of
    these and more (they carry a key these lack)."""
    mine = set(labels)
    keys = {k for k, _ in labels}
    others = {k for other in label_sets if mine < set(other) for k, _ in other} - keys
    selector: dict[str, Any] = {}
    if labels:
        selector["matchLabels"] = dict(labels)
    if others:
        selector["matchExpressions"] = [{"key": k, "operator": "DoesNotExist"} for k in sorted(others)]
    return selector


def _policy(namespace: str, name: str, spec: dict[str, Any], audit: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {SUGGESTED_LABEL: "true"}}
    if audit:
        metadata["annotations"] = {AUDIT_ANNOTATION: "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata, "spec": spec}


def _slug(labels: Labels) -> str:
    text = "-".join(f"{k.rsplit('/', 1)[-1]}-{v}" for k, v in labels) or "unlabeled"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "workload"


def _names(label_sets: Sequence[Labels]) -> dict[Labels, str]:
    """A policy name per workload: suggested-<its labels>, with a hash of
    the labels when that is cut short or shared (names stay unique and the
    same for the same labels, whatever else is suggested with them)."""
    slugs = {ls: _slug(ls) for ls in label_sets}
    taken: dict[str, int] = {DEFAULT_DENY_NAME.removeprefix(NAME_PREFIX): 1}
    for slug in slugs.values():
        taken[slug] = taken.get(slug, 0) + 1
    names = {}
    for ls, slug in slugs.items():
        if len(slug) > SLUG_MAX or taken[slug] > 1:
            digest = hashlib.sha256(labels_json(ls).encode()).hexdigest()[:8]
            slug = f"{slug[:SLUG_MAX].rstrip('-')}-{digest}"
        names[ls] = NAME_PREFIX + slug
    return names


def render(suggestions: Sequence[Suggestion], header: Sequence[str] = ()) -> str:
    """Multi-document YAML (kubectl apply -f -), comments first: the header,
    then every note."""
    comments = [f"# {h}\n" for h in header]
    for s in suggestions:
        comments += [f"# note ({s.namespace}): {n}\n" for n in s.notes]
    docs = [yaml.safe_dump(p, sort_keys=False, default_flow_style=False) for s in suggestions for p in s.policies]
    return "".join(comments) + "".join(f"---\n{d}" for d in docs)
