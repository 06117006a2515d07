"""Which version of each NetworkPolicy a compilation pass takes in.

NetworkPolicy is namespaced: any namespace owner can write a policy with
tens of thousands of ipBlock prefixes. Two rules keep such a policy from
stalling the node for everyone else:

- **Limits per object.** A policy naming more prefixes than
  `max_prefixes_per_policy` is not compiled as written: it is replaced by its
  fail-closed form (it still isolates the pods it selects, in the directions
  it names, and allows nothing) and reported by name, like any other
  invalid object.
- **Room in the ipcache.** A prefix that does not fit in the ipcache would
  leave its addresses to a shorter prefix's identity: an except not
  written would open what it excepts. So a changed policy whose new
  prefixes do not fit is taken in fail-closed and named ("does not fit"),
  and tried again when prefixes leave; what is in force keeps its room.
- **Room in the policy map.** When what a pass compiles does not fit in the
  policy map, the policies with the most entries are refused (fail-closed,
  named) until the rest fits, rather than leaving which entries are
  written to chance: a flood costs its author, and an allow elsewhere that
  fits is in force. They are tried again when fewer entries are in use.
- **A budget per pass.** Each new ipBlock prefix costs an identity, an
  ipcache entry and an update of every block holding it; each ipBlock not
  seen yet costs a look over the prefixes inside it. A pass takes in at
  most `prefixes_per_pass` of these units. A changed policy needing more
  waits, its previous version (or nothing, if it is new) staying in force,
  while its prefixes are staged into force and then its blocks resolved, a
  budget per pass (staged prefixes change no verdict: classes only get
  finer; a resolved block is only a cached set of identities, kept up to
  date like every other). Once the rest fits in one pass it is taken in
  whole. Policies needing
  fewer prefixes go first, so a change elsewhere, and every revocation that
  adds no prefix (deleting a policy, narrowing a rule, dropping a peer), is
  never queued behind a large one: it waits at most one pass.

A policy that selects no pod of this node needs no prefix here and is taken
in at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..model.objects import IPBlock, IPNetwork, NetworkPolicy, Pod, PolicyRule

# Defaults; `enforcer run` can change each (see README "Limits and failure
# behaviour").
MAX_PREFIXES_PER_POLICY = 65536
MAX_ENTRIES_PER_POLICY_POD = 65536
PREFIXES_PER_PASS = 16384


@dataclass(frozen=True)
class CompileLimits:
    max_prefixes_per_policy: int = MAX_PREFIXES_PER_POLICY
    # Policy map entries one policy may compile to for one local pod.
    max_entries_per_policy_pod: int = MAX_ENTRIES_PER_POLICY_POD
    prefixes_per_pass: int = PREFIXES_PER_PASS
    # The ipcache maps' capacities (prefixes; full-length entries: pods',
    # nodes' and /32 or /128 ipBlocks'). None: unbounded (tests).
    ipcache_capacity: int | None = None
    ipcache_hosts_capacity: int | None = None
    policy_capacity: int | None = None  # the policy map's
    services_capacity: int | None = None  # the services map's (frontends: compiler/services.py)


_NOTHING = PolicyRule((), (), valid=False)


def fail_closed(pol: NetworkPolicy, reason: str) -> NetworkPolicy:
    """The policy with every rule allowing nothing: it still isolates what
    it selects, in the directions it names."""
    return dataclasses.replace(
        pol, ingress=tuple(_NOTHING for _ in pol.ingress), egress=tuple(_NOTHING for _ in pol.egress),
        errors=pol.errors + (reason,))


@dataclass
class Admission:
    """Keeps, per policy, the version in force and what is staged for the
    next one."""

    limits: CompileLimits = field(default_factory=CompileLimits)
    # key -> (the snapshot's version, the fail-closed stand-in taken in for
    # it, and for a refusal for room: which map and how much of it was in
    # use then; less now, it is tried again)
    _over_limit: dict[str, tuple[NetworkPolicy, NetworkPolicy, tuple[str, int] | None]] = field(default_factory=dict)
    # key -> (the version waiting, prefixes staged into force for it)
    staged: dict[str, tuple[NetworkPolicy, list[IPNetwork]]] = field(default_factory=dict)
    _blocks: dict[str, tuple[NetworkPolicy, tuple[IPBlock, ...]]] = field(default_factory=dict)
    # key -> (the version waiting, its prefixes and blocks still to stage,
    # as last counted): each pass looks only at what is left.
    _todo: dict[str, tuple[NetworkPolicy, list[IPNetwork], list[IPBlock]]] = field(default_factory=dict)
    # Peer keys ("ip", block) of the versions waiting, and what they were
    # made for.
    _held: tuple[tuple[tuple[str, int], ...], frozenset[tuple[str, IPBlock]]] = ((), frozenset())

    def blocks_of(self, pol: NetworkPolicy) -> tuple[IPBlock, ...]:
        """The distinct ipBlocks of a policy's valid rules."""
        hit = self._blocks.get(pol.key)
        if hit is not None and hit[0] is pol:
            return hit[1]
        found = tuple(dict.fromkeys(peer.ip_block for rule in (*pol.ingress, *pol.egress) if rule.valid
                                    for peer in rule.peers if peer.ip_block is not None))
        self._blocks[pol.key] = (pol, found)
        return found

    def refused_for_room(self) -> list[str]:
        return sorted(key for key, (_, _, at) in self._over_limit.items() if at is not None)

    def refuse_for_policy_room(self, wanted: Mapping[str, NetworkPolicy], entries_by_policy: Mapping[str, int],
                               total: int) -> list[str]:
        """The policy map cannot hold what the pass compiled: refuse the
        policies with the most entries (a flood is its author's) until the
        rest fits. They are taken in fail-closed and named; tried again when
        fewer entries are in use. Returns the keys refused."""
        capacity = self.limits.policy_capacity
        assert capacity is not None
        refused = []
        for key, n in sorted(entries_by_policy.items(), key=lambda kv: (-kv[1], kv[0])):
            if total <= capacity:
                break
            pol = wanted.get(key)
            if pol is None or n == 0:
                continue
            stand_in = fail_closed(pol, f"compiles to {n} policy map entries on this node and the policy map "
                                        f"({capacity} entries) cannot hold all policies: the largest are refused "
                                        f"first; its rules allow nothing")
            self._over_limit[key] = (pol, stand_in, ("policy", total))
            total -= n
            refused.append(key)
        return refused

    def policy_room_used(self, keys: Iterable[str], total: int) -> None:
        """The policy map entries in use once `keys` were refused: they are
        tried again when fewer are."""
        for key in keys:
            pol, stand_in, _ = self._over_limit[key]
            self._over_limit[key] = (pol, stand_in, ("policy", total))

    @staticmethod
    def _room(capacity: int | None, in_use: int) -> int:
        return max(0, capacity - in_use) if capacity is not None else 1 << 62

    def held_peers(self) -> frozenset[tuple[str, IPBlock]]:
        """Peer keys of the blocks of the versions waiting: their resolved
        sets are kept."""
        made_for = tuple(sorted((key, id(pol)) for key, (pol, _) in self.staged.items()))
        if made_for != self._held[0]:
            self._held = (made_for, frozenset(("ip", b) for pol, _ in self.staged.values()
                                              for b in self.blocks_of(pol)))
        return self._held[1]

    def admit(self, wanted: Mapping[str, NetworkPolicy], in_force: Mapping[str, NetworkPolicy],
              local_pods: Callable[[str], Iterable[Pod]], prefixes_of: Callable[[NetworkPolicy], frozenset[IPNetwork]],
              is_in_force: Callable[[IPNetwork], bool], is_resolved: Callable[[IPBlock], bool],
              in_use: tuple[int, int] = (0, 0), policy_entries: int = 0
              ) -> tuple[dict[str, NetworkPolicy], list[IPNetwork], list[IPNetwork], list[IPBlock]]:
        """The policies this pass compiles, given the snapshot's (`wanted`)
        and last pass's (`in_force`). Returns them with the prefixes to
        stage into force now, the staged prefixes to release (their policy
        was taken in, replaced or deleted) and the blocks of waiting
        versions to resolve now. `in_use`: ipcache entries in use (prefixes,
        full-length entries); `policy_entries`: policy map entries in use."""
        out = dict(wanted)
        now_in_use = {"ipcache": sum(in_use), "policy": policy_entries}
        room = [self._room(self.limits.ipcache_capacity, in_use[0]),
                self._room(self.limits.ipcache_hosts_capacity, in_use[1])]
        release: list[IPNetwork] = []
        for key in [k for k in self._over_limit if k not in wanted]:
            del self._over_limit[key]
        waiting: list[tuple[int, str, NetworkPolicy, list[IPNetwork], list[IPBlock]]] = []
        for key, pol in wanted.items():
            over = self._over_limit.get(key)
            if over is not None and over[0] is pol and (over[2] is None or now_in_use[over[2][0]] >= over[2][1]):
                out[key] = over[1]
                continue
            if in_force.get(key) is pol:
                continue
            prefixes = prefixes_of(pol)
            limit = self.limits.max_prefixes_per_policy
            if len(prefixes) > limit:
                stand_in = fail_closed(pol, f"names {len(prefixes)} ipBlock prefixes, more than the limit "
                                            f"of {limit} per policy (--max-prefixes-per-policy): "
                                            f"its rules allow nothing")
                self._over_limit[key] = (pol, stand_in, None)
                out[key] = stand_in
                continue
            self._over_limit.pop(key, None)
            if not prefixes or not any(pol.selects(p) for p in local_pods(pol.namespace)):
                continue
            todo = self._todo.get(key)
            left = (todo[1], todo[2]) if todo is not None and todo[0] is pol else (prefixes, self.blocks_of(pol))
            missing = [p for p in left[0] if not is_in_force(p)]
            unresolved = [b for b in left[1] if not is_resolved(b)]
            if len(missing) + len(unresolved) > 0:
                waiting.append((len(missing) + len(unresolved), key, pol, missing, unresolved))
        budget = self.limits.prefixes_per_pass
        stage: list[IPNetwork] = []
        warm: list[IPBlock] = []
        for n, key, pol, missing, unresolved in sorted(waiting, key=lambda w: (w[0], w[1])):
            hosts = sum(1 for p in missing if p.prefixlen == p.max_prefixlen)
            need = (len(missing) - hosts, hosts)
            if need[0] > room[0] or need[1] > room[1]:
                stand_in = fail_closed(pol, f"its {len(missing)} new ipBlock prefixes do not fit in this node's "
                                            f"ipcache ({in_use[0]} prefixes and {in_use[1]} addresses in use): "
                                            f"its rules allow nothing")
                self._over_limit[key] = (pol, stand_in, ("ipcache", now_in_use["ipcache"]))
                out[key] = stand_in
                continue
            room[0] -= need[0]
            room[1] -= need[1]
            if n <= budget:
                budget -= n
                continue  # taken in whole this pass
            # Too large for what is left of this pass: the version in force
            # stays; stage what the budget allows, prefixes first (a block
            # is resolved over the prefixes in force).
            if key in in_force:
                out[key] = in_force[key]
            else:
                del out[key]
            chunk = missing[:budget]
            budget -= len(chunk)
            if not missing:
                warm += unresolved[:budget]
                budget -= len(unresolved[:budget])
            held = self.staged.get(key)
            if held is not None and held[0] is not pol:
                release += held[1]
                held = None
            self.staged[key] = (pol, (held[1] if held else []) + chunk)
            self._todo[key] = (pol, missing, unresolved)
            stage += chunk
        # Staged prefixes of versions no longer waiting go (a version taken
        # in counts its prefixes itself from this pass on).
        for key in list(self.staged):
            pol, staged_prefixes = self.staged[key]
            if out.get(key) is pol or wanted.get(key) is not pol:
                release += staged_prefixes
                del self.staged[key]
        for key in [k for k in self._blocks if k not in wanted]:
            del self._blocks[key]
        for key in [k for k in self._todo if k not in self.staged]:
            del self._todo[key]
        return out, stage, release, warm

    def pending(self) -> list[str]:
        """Policies whose latest version is still being staged."""
        return sorted(self.staged)
