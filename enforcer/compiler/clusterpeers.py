"""Cluster policy peers as identity sets, and the prefixes they need in
force.

  namespaces, pods  the pod identities PeerSets finds for the same selectors
                    (host-network pods have no pod identity: the API says
                    these peers never match them)
  networks          each CIDR as an ipBlock without excepts: the CIDR
                    identities inside it and the pods whose class lies
                    inside (networks match pod addresses too), plus this
                    node (IDENTITY_HOST) when it holds one of its addresses
  nodes             the CIDR identities of the matching Nodes' addresses
                    (InternalIP, ExternalIP), each a full-length prefix in
                    force, so host-network pods on them match too; this
                    node's own addresses are IDENTITY_HOST

A rule that fails closed (`match_all_peers`) has every peer: None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..datapath.layout import IDENTITY_HOST
from ..model.objects import IPBlock, IPNetwork
from ..model.selectors import LabelSelector
from .identities import CidrIdentities, host_network
from .peers import PeerKey, PeerSets

if TYPE_CHECKING:
    from ..model.clusterpolicy import ClusterNetworkPolicy, ClusterPeer, ClusterRule
    from ..model.node import Node

_EMPTY = LabelSelector()


class ClusterPeerSets:
    def __init__(self, peers: PeerSets, cidrs: CidrIdentities) -> None:
        self.peers = peers
        self.cidrs = cidrs
        self.nodes: Mapping[str, Node] = {}
        self.own_name = ""
        self.own_nets: tuple[IPNetwork, ...] = ()
        self._blocks: dict[IPNetwork, IPBlock] = {}

    def set_context(self, nodes: Mapping[str, Node], own_name: str, own_nets: tuple[IPNetwork, ...]) -> None:
        self.nodes = nodes
        self.own_name = own_name
        self.own_nets = own_nets

    def _is_own(self, node: Node) -> bool:
        if node.name == self.own_name:
            return True
        return any(host_network(a) in self.own_nets for a in node.addresses)

    def _matching_nodes(self, selector: LabelSelector) -> list[Node]:
        return [n for n in self.nodes.values() if selector.matches(n.labels)]

    def block(self, net: IPNetwork) -> IPBlock:
        found = self._blocks.get(net)
        if found is None:
            found = self._blocks[net] = IPBlock(net)
        return found

    def rule_peers(self, rule: ClusterRule, deps: set[PeerKey]) -> frozenset[int] | None:
        if rule.match_all_peers:
            return None
        out: set[int] = set()
        for peer in rule.peers:
            out |= self.peer(peer, deps)
        return frozenset(out)

    def peer(self, peer: ClusterPeer, deps: set[PeerKey]) -> set[int]:
        out: set[int] = set()
        if peer.kind in ("namespaces", "pods"):
            ns_sel = peer.namespace_selector or _EMPTY
            pod_sel = peer.pod_selector if peer.kind == "pods" else None
            pk: PeerKey = ("sel", ns_sel, pod_sel)
            deps.add(pk)
            out |= self.peers.get(pk)
        elif peer.kind == "networks":
            for net in peer.networks:
                pk = ("ip", self.block(net))
                deps.add(pk)
                out |= self.peers.get(pk)
                if any(own.version == net.version and own.subnet_of(net) for own in self.own_nets):  # type: ignore[arg-type]
                    out.add(IDENTITY_HOST)
        elif peer.kind == "nodes" and peer.node_selector is not None:
            for node in self._matching_nodes(peer.node_selector):
                if self._is_own(node):
                    out.add(IDENTITY_HOST)
                    continue
                for addr in node.addresses:
                    ident = self.cidrs.by_prefix.get(host_network(addr))
                    if ident is not None:
                        out.add(ident)
        return out

    def prefixes(self, cnp: ClusterNetworkPolicy) -> frozenset[IPNetwork]:
        """The prefixes a cluster policy needs in force: its networks, and
        the addresses of the Nodes its node peers select now."""
        out: set[IPNetwork] = set()
        for rule in (*cnp.ingress, *cnp.egress):
            for peer in rule.peers:
                if peer.kind == "networks":
                    out.update(peer.networks)
                elif peer.kind == "nodes" and peer.node_selector is not None:
                    for node in self._matching_nodes(peer.node_selector):
                        out.update(host_network(a) for a in node.addresses)
        return frozenset(out)


def has_node_peers(cnp: ClusterNetworkPolicy) -> bool:
    return any(p.kind == "nodes" for r in (*cnp.ingress, *cnp.egress) for p in r.peers)
