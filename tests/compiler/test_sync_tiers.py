"""Sync with verdicts in the policy map (datapath/sync.py step 1): a deny
that cannot be written holds back the allows of its endpoint and
direction, so a full map never lets a peer fall back past its own missing
deny to an every-peer allow. Run against in-memory maps whose policy map
refuses chosen keys."""

from __future__ import annotations

from enforcer.datapath.layout import POLICY_PREFIX_EXACT
from enforcer.datapath.policykeys import from_policy_key
from enforcer.datapath.reasons import Reason
from enforcer.datapath.sync import HELD, MapContents, MapSync
from enforcer.errors import MapFullError
from enforcer.records import PolicyMapKey, PolicyValue

from .test_incremental import FakeMaps

EP, DIR = 3, 0
ALLOW_ALL = PolicyValue(0, int(Reason["ALLOW_NOT_ISOLATED"]))
DENY_ADMIN = PolicyValue(7, int(Reason["DROP_ADMIN"]))
EVERY_PEER = PolicyMapKey(0, EP, DIR, 0, 0, POLICY_PREFIX_EXACT)
PEER_400 = PolicyMapKey(400, EP, DIR, 0, 0, POLICY_PREFIX_EXACT)
OTHER_EP = PolicyMapKey(0, EP + 1, DIR, 0, 0, POLICY_PREFIX_EXACT)


class RefusingPolicyMaps(FakeMaps):
    """The policy map is full for the keys in `refuse`."""

    def __init__(self, refuse: set[PolicyMapKey]) -> None:
        super().__init__()
        inner = self.m["policy"]
        refused = refuse

        class Refusing(type(inner)):  # type: ignore[misc]
            def update(self, key, value, flags=0):  # type: ignore[no-untyped-def]
                if from_policy_key(key) in refused:
                    raise MapFullError("policy", "update", 7)
                super().update(key, value, flags)

        self.m["policy"] = Refusing()
        self.refuse = refuse

    def written(self) -> set[PolicyMapKey]:
        from enforcer.datapath.layout import PolicyKey
        return {from_policy_key(PolicyKey.from_buffer_copy(k)) for k in self.m["policy"].d}


def contents(policy: dict[PolicyMapKey, PolicyValue]) -> MapContents:
    return MapContents({}, {}, policy, {}, set())


def test_a_deny_that_cannot_be_written_holds_back_its_allows():
    maps = RefusingPolicyMaps({PEER_400})
    report = MapSync(maps).apply(contents({PEER_400: DENY_ADMIN, EVERY_PEER: ALLOW_ALL, OTHER_EP: ALLOW_ALL}))
    written = maps.written()
    # Peer 400 would fall back to the every-peer allow: that allow waits.
    assert EVERY_PEER not in written
    assert OTHER_EP in written  # another endpoint is not held back
    assert report.not_written["policy"] == {"full": 1, HELD: 1}
    assert any("deny entry of the same endpoint" in s for s in report.samples)


def test_once_the_deny_fits_both_are_written():
    maps = RefusingPolicyMaps({PEER_400})
    sync = MapSync(maps)
    want = {PEER_400: DENY_ADMIN, EVERY_PEER: ALLOW_ALL}
    sync.apply(contents(want))
    maps.refuse.clear()
    report = sync.apply(contents(want))
    assert maps.written() == set(want)
    assert report.complete
