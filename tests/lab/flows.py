"""Table-driven connectivity checks for the lab tests: a list of flows with
the outcome each must have, probed concurrently, every mismatch reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from enforcer.lab.topology import NODE
from tests.support.session import LabSession

OK = Outcome.OK
DENIED = Outcome.TIMEOUT    # dropped: nothing comes back
REFUSED = Outcome.REFUSED   # allowed through, nothing listens (RST / port unreachable)
# How long a probe waits for an answer. A drop is only seen as silence, so
# a flow that must be denied costs DENY_TIMEOUT; one that must pass gets
# longer, which costs nothing unless it fails, and keeps a loaded machine
# from turning a slow answer into a false "denied".
DENY_TIMEOUT = 1.0
PASS_TIMEOUT = 3.0
LABELS = {OK: "ok", DENIED: "denied (no answer)", REFUSED: "refused", Outcome.ERROR: "error"}


@dataclass(frozen=True)
class Flow:
    src: str  # pod name or "node"
    dst: str  # pod name
    port: int
    proto: str
    expect: Outcome

    def text(self, family: int) -> str:
        return f"{self.src} -> {self.dst} {self.proto}/{self.port} IPv{family}"


def check_flows(env: LabSession, flows: Sequence[Flow], family: int,
                src_ip: str | None = None) -> None:
    lab = env.lab
    specs = [ProbeSpec(lab.netns_of(f.src), lab.pod(f.dst).ip(family), f.port, f.proto, src_ip,
                       DENY_TIMEOUT if f.expect is DENIED else PASS_TIMEOUT)
             for f in flows]
    results = probe_many(specs)
    wrong = []
    for flow, res in zip(flows, results, strict=False):
        if res.outcome is not flow.expect:
            wrong.append(f"{flow.text(family)}: expected {LABELS[flow.expect]}, got {LABELS[res.outcome]} {res.detail}".rstrip())
        elif res.ok and res.answered_by != flow.dst:
            wrong.append(f"{flow.text(family)}: answered by {res.answered_by!r}")
    assert not wrong, "connectivity differs from the table:\n  " + "\n  ".join(wrong)


def flows(*rows: tuple[str, str, int, str, Outcome]) -> list[Flow]:
    return [Flow(*row) for row in rows]


__all__ = ["Flow", "check_flows", "flows", "OK", "DENIED", "REFUSED", "NODE"]
