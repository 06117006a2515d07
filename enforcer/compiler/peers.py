"""Peers: the identity set each `from`/`to` entry names, kept up to date
as identities, namespace labels and prefixes change, and the union of a
rule's peers.

A peer's set is computed from (its cache key):
  ("ip", IPBlock)                    an ipBlock: the CIDR identities of the
                                     prefixes in force inside it, and the pod
                                     identities whose class is one of those
  ("sel", ns selector, pod selector) pods of the namespaces a selector picks
  ("pod", namespace, pod selector)   pods of the policy's own namespace
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..model.objects import IPBlock, IPNetwork, Peer
from ..model.selectors import LabelSelector
from .identities import CidrIdentities, Flip, PodIdentities

PeerKey = tuple  # ("ip", block) | ("sel", ns selector, pod selector) | ("pod", namespace, pod selector)

_EMPTY_SELECTOR = LabelSelector()


class PeerSets:
    def __init__(self, pods: PodIdentities, cidrs: CidrIdentities,
                 labels_of: Callable[[str], Mapping[str, str]]) -> None:
        self.pods = pods
        self.cidrs = cidrs
        self.labels_of = labels_of  # a namespace's labels
        self.sets: dict[PeerKey, frozenset[int]] = {}
        # A rule's union, made once a pass: (policy namespace, id of the
        # rule's peers) -> (the peers, their union, their keys).
        self.by_rule: dict[tuple[str, int], tuple[tuple[Peer, ...], frozenset[int], list[PeerKey]]] = {}

    def begin_pass(self) -> None:
        self.by_rule = {}

    def retain(self, used: set[PeerKey]) -> None:
        """Forget the peers (and blocks) no longer used."""
        if len(used) != len(self.sets):
            self.sets = {pk: v for pk, v in self.sets.items() if pk in used}
        self.cidrs.blocks.retain({pk[1] for pk in used if pk[0] == "ip"})

    @staticmethod
    def key(policy_ns: str, peer: Peer) -> PeerKey:
        if peer.ip_block is not None:
            return ("ip", peer.ip_block)
        if peer.namespace_selector is not None:
            return ("sel", peer.namespace_selector, peer.pod_selector)
        return ("pod", policy_ns, peer.pod_selector)

    def get(self, pk: PeerKey) -> frozenset[int]:
        found = self.sets.get(pk)
        if found is None:
            found = self.sets[pk] = self.resolve(pk)
        return found

    def resolve(self, pk: PeerKey) -> frozenset[int]:
        if pk[0] == "ip":
            found: set[int] = set()
            by_class = self.pods.by_class
            for p in self.cidrs.blocks.get(pk[1]):
                found.add(self.cidrs.by_prefix[p])
                ids = by_class.get(p)
                if ids:
                    found |= ids
            return frozenset(found)
        if pk[0] == "sel":
            sel = pk[1]
            namespaces = [ns for ns in self.pods.by_ns if sel.matches(self.labels_of(ns))]
        else:
            namespaces = [pk[1]]
        pod_sel = pk[2] or _EMPTY_SELECTOR
        empty: dict[int, dict[str, str]] = {}
        if pod_sel.is_empty:
            return frozenset(i for ns in namespaces for i in self.pods.by_ns.get(ns, empty))
        return frozenset(i for ns in namespaces for i, labels in self.pods.by_ns.get(ns, empty).items()
                         if pod_sel.matches(labels))

    def refresh(self, flips: list[Flip], ns_changed: dict[str, Mapping[str, str]],
                       block_changes: dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]]) -> set[PeerKey]:
        """Bring every known peer's identity set up to date: the identities
        that came or went are added or removed where they match, an ipBlock
        gains or loses the CIDR identities of the prefixes that came into it
        or left it; a peer whose namespaces may have changed labels is
        computed anew. Returns the peers whose set changed."""
        changed: set[PeerKey] = set()
        if not self.sets or not (flips or ns_changed or block_changes):
            return changed
        flips_by_ns: dict[str, list[tuple[int, dict[str, str], bool]]] = {}
        class_flips: list[tuple[int, IPNetwork, bool]] = []
        for ident, key, now in flips:
            flips_by_ns.setdefault(key.namespace, []).append((ident, dict(key.labels), now))
            if key.block_class is not None:
                class_flips.append((ident, key.block_class, now))
        relabelled = [(self.labels_of(ns), before) for ns, before in ns_changed.items()]
        for pk, old in list(self.sets.items()):
            kind = pk[0]
            if kind == "ip":
                moved = block_changes.get(pk[1])
                if not (moved or class_flips):
                    continue
                updates: list[tuple[int, bool]] = []
                if moved:
                    ins, outs = moved
                    updates += [(self.cidrs.identity_of(p), False) for p in outs]
                    updates += [(self.cidrs.by_prefix[p], True) for p in ins]
                if class_flips:
                    # An identity gone is gone from every set (its class may
                    # have left the block with it); one that came joins the
                    # blocks its class lies in now.
                    inside = self.cidrs.blocks.get(pk[1])
                    updates += [(i, False) if not now else (i, True) for i, cls, now in class_flips
                                if not now or cls in inside]
                new = _apply_flips(old, updates)
            elif kind == "pod":
                in_ns = flips_by_ns.get(pk[1])
                if not in_ns:
                    continue
                new = _apply_flips(old, _matching(pk[2], in_ns))
            else:
                sel = pk[1]
                if any(sel.matches(now) or sel.matches(before) for now, before in relabelled):
                    new = self.resolve(pk)
                elif flips_by_ns:
                    matching: list[tuple[int, bool]] = []
                    for ns, in_ns in flips_by_ns.items():
                        if sel.matches(self.labels_of(ns)):
                            matching += _matching(pk[2], in_ns)
                    new = _apply_flips(old, matching)
                else:
                    continue
            if new != old:
                self.sets[pk] = new
                changed.add(pk)
        return changed

    def union(self, policy_ns: str, peers: tuple[Peer, ...], deps: set[PeerKey]) -> frozenset[int] | None:
        if not peers:
            return None
        if len(peers) == 1:
            pk = self.key(policy_ns, peers[0])
            deps.add(pk)
            return self.get(pk)
        # A rule's union is the same for every pod the rule applies to:
        # made once a pass (a rule may name tens of thousands of peers).
        # Keyed by the tuple's id: the snapshot holds it for the pass.
        hit = self.by_rule.get((policy_ns, id(peers)))
        if hit is not None and hit[0] is peers:
            deps.update(hit[2])
            return hit[1]
        out: set[int] = set()
        keys = []
        for peer in peers:
            pk = self.key(policy_ns, peer)
            keys.append(pk)
            out |= self.get(pk)
        found = frozenset(out)
        self.by_rule[(policy_ns, id(peers))] = (peers, found, keys)
        deps.update(keys)
        return found


def _matching(pod_sel: LabelSelector | None, flips: list[tuple[int, dict[str, str], bool]]) -> list[tuple[int, bool]]:
    if pod_sel is None or pod_sel.is_empty:
        return [(i, now) for i, _, now in flips]
    return [(i, now) for i, labels, now in flips if pod_sel.matches(labels)]


def _apply_flips(old: frozenset[int], flips: list[tuple[int, bool]]) -> frozenset[int]:
    if not flips:
        return old
    new = set(old)
    for ident, now in flips:
        if now:
            new.add(ident)
        else:
            new.discard(ident)
    return frozenset(new)
