"""Run frames through the loaded programs and report what they did: the
verdict, the counter that moved and the events emitted."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from enforcer.datapath import bpfsys
from enforcer.datapath.events import EventReader, Verdict
from enforcer.datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_HOST,
)
from enforcer.datapath.loader import FROM_POD, TO_NETWORK, TO_POD, LoadedPrograms, load_datapath_programs, remove_pins
from enforcer.datapath.maps import DatapathMaps, PolicyRule
from enforcer.datapath.reasons import Reason
from enforcer.datapath.source import DatapathConfig

TC_ACT_UNSPEC = -1
TC_ACT_SHOT = 2

# The test world. Endpoints sit on loopback (ifindex 1), which is where a
# test-run skb appears unless told otherwise.
POD_A = dict(v4="10.0.0.1", v6="fd00::1", id=1, identity=300)
POD_B = dict(v4="10.0.0.2", v6="fd00::2", id=2, identity=301)
PEERS = {
    # name: (v4, v6, identity)
    "other_pod": ("10.1.0.5", "fd01::5", 400),
    "cidr": ("10.2.1.1", "fd02:0:0:1::1", 500),        # inside the block
    "except": ("10.2.3.3", "fd02:0:0:3::3", 501),      # inside the block's except
    "pod_in_cidr": ("10.2.4.4", "fd02:0:0:4::4", 402),  # pod IP inside the block
    "host": ("10.9.9.9", "fd09::9", IDENTITY_HOST),
    "world": ("192.0.2.1", "2001:db8::1", 2),
}
IPCACHE = {
    "10.1.0.5/32": 400, "fd01::5/128": 400,
    "10.2.0.0/16": 500, "fd02::/48": 500,
    "10.2.3.0/24": 501, "fd02:0:0:3::/64": 501,
    "10.2.4.4/32": 402, "fd02:0:0:4::4/128": 402,
    "10.9.9.9/32": IDENTITY_HOST, "fd09::9/128": IDENTITY_HOST,
    "10.0.0.1/32": 300, "fd00::1/128": 300,
    "10.0.0.2/32": 301, "fd00::2/128": 301,
}


@dataclass
class Outcome:
    retval: int
    reasons: dict[tuple[int, int, Reason], int]  # (endpoint, direction, reason) -> packets
    events: list[Verdict] = field(default_factory=list)
    mark: int = 0  # skb->mark as the program left it

    @property
    def passed(self) -> bool:
        return self.retval == TC_ACT_UNSPEC

    @property
    def reason(self) -> Reason:
        (only,) = self.reasons  # exactly one counter moves per packet
        return only[2]


class Harness:
    def __init__(self, config: DatapathConfig) -> None:
        self.config = config
        self.loaded: LoadedPrograms = load_datapath_programs(config)
        self.maps = DatapathMaps(config.pin_dir)
        self._events: list[Verdict] = []
        self.reader = EventReader(self.loaded.map_fd("events"), self._events.append)

    def close(self) -> None:
        self.maps.close()
        self.loaded.cleanup()
        remove_pins(self.config)

    def reset(self) -> None:
        """Standard world: pods A and B, not isolated, no policy."""
        for name in ("endpoints", "endpoint_ids", "policy", "conntrack", "fragments", "services",
                     "svc_pending"):
            self.maps[name].clear()
        self.maps.clear_identities()
        for cidr, ident in IPCACHE.items():
            self.maps.set_identity(cidr, ident)
        for pod in (POD_A, POD_B):
            self.set_pod(pod)
        self.reader.drain()
        self._events.clear()

    def set_pod(self, pod: dict, ingress: bool = False, egress: bool = False, ifindex: int = 1,
                flags: int = 0) -> None:
        """flags: endpoint flags beyond isolation (EP_F_EGRESS_HOST_JUDGED,
        EP_F_SELF_JUDGED)."""
        flags |= (EP_F_INGRESS_ISOLATED if ingress else 0) | (EP_F_EGRESS_ISOLATED if egress else 0)
        for fam in ("v4", "v6"):
            self.maps.set_endpoint(pod[fam], pod["id"], ifindex, pod["identity"], flags)
        self.maps.set_endpoint_id(pod["id"], ifindex, pod["identity"], flags)

    def allow(self, pod: dict, direction: int, identity: int, protocol: int | None = None,
              port: int | None = None, end_port: int | None = None, rule_id: int = 77,
              reason: Reason = Reason.ALLOW_POLICY, audit: tuple[Reason, int] | None = None) -> None:
        """Policy entries for pod: protocol None is every protocol, port None
        every port. reason: the verdict they hold (a cluster policy's
        DROP_ADMIN, ALLOW_BASELINE, ...); ALLOW_POLICY is NetworkPolicy's allow.
        audit: the (drop reason, rule id) policies in audit mode would give."""
        audit_reason, audit_rule = audit if audit is not None else (0, 0)
        self.maps.add_rule(PolicyRule(pod["id"], direction, identity, protocol, port, end_port, rule_id,
                                      int(reason), int(audit_reason), audit_rule))

    def entry(self, pod: dict, direction: int, identity: int, reason: Reason, protocol: int | None = None,
              port: int | None = None, end_port: int | None = None, rule_id: int = 77,
              audit: tuple[Reason, int] | None = None) -> None:
        """allow() for an entry of any verdict, the reason first."""
        self.allow(pod, direction, identity, protocol, port, end_port, rule_id, reason, audit)

    def _all_counters(self) -> dict[tuple[int, int, Reason], int]:
        out = {}
        for ep in (0, POD_A["id"], POD_B["id"]):
            for (d, r), (pkts, _bytes) in self.maps.counters(ep).items():
                out[(ep, d, r)] = pkts
        return out

    def run(self, hook: str, frame: bytes, mark: int = 0, ingress_ifindex: int = 0) -> Outcome:
        before = self._all_counters()
        res = bpfsys.prog_test_run(self.loaded.fd(hook), frame, mark=mark, ingress_ifindex=ingress_ifindex)
        after = self._all_counters()
        moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        self.reader.drain()
        events = list(self._events)
        self._events.clear()
        return Outcome(res.retval, moved, events, res.mark)

    def egress(self, frame: bytes, mark: int = 0) -> Outcome:
        return self.run(FROM_POD, frame, mark=mark)

    def ingress(self, frame: bytes, mark: int = 0, ingress_ifindex: int = 0) -> Outcome:
        return self.run(TO_POD, frame, mark=mark, ingress_ifindex=ingress_ifindex)

    def to_network(self, frame: bytes, mark: int = 0) -> Outcome:
        return self.run(TO_NETWORK, frame, mark=mark)


def new_harness(tag: str, **overrides: object) -> Harness:
    pin = Path(f"/sys/fs/bpf/enforcer-test-pkt-{os.getpid()}-{tag}")
    if pin.exists():
        shutil.rmtree(pin)
    return Harness(replace(DatapathConfig(pin_dir=pin), **overrides))


__all__ = ["Harness", "Outcome", "new_harness", "POD_A", "POD_B", "PEERS", "DIR_INGRESS", "DIR_EGRESS",
           "TC_ACT_SHOT", "TC_ACT_UNSPEC", "FROM_POD", "TO_POD", "TO_NETWORK"]
