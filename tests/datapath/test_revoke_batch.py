"""Batch reads and deletes on the real conntrack map, and Revocation
against the per-entry reference walk (sync.revoke_connections). Root: loads
the programs."""

from __future__ import annotations

import ipaddress
import random
import socket

from enforcer.datapath.layout import CT_F_RECHECK, CT_F_SERVICE, FAMILY_V4, CtEntry, CtKey, addr_bytes
from enforcer.datapath.revoke import Affected, Revocation, revoke
from enforcer.datapath.sync import revoke_connections

from .harness import Harness

N = 5000


def fill(dp: Harness, n: int = N, services_every: int = 0) -> list[tuple[CtKey, CtEntry]]:
    ct = dp.maps["conntrack"]
    ct.clear()
    out, keys, values = [], bytearray(), bytearray()
    for i in range(n):
        k = CtKey(pod=addr_bytes(ipaddress.ip_address(f"10.0.0.{1 + i % 20}")),
                  peer=addr_bytes(ipaddress.ip_address(f"10.1.{i // 250}.{i % 250}")),
                  ifindex=1, pod_port=socket.htons(80), peer_port=socket.htons(1024 + i), family=FAMILY_V4, proto=6)
        v = CtEntry(expires_ns=1 << 62, endpoint_id=1 + i % 20, origin=i % 2,
                    flags=CT_F_SERVICE if services_every and i % services_every == 0 else 0)
        out.append((k, v))
        keys += bytes(k)
        values += bytes(v)
    assert ct.update_batch(keys, values, n) == n
    return out


def snapshot(dp: Harness) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in dp.maps["conntrack"].items()}


def test_batch_read_sees_every_entry_once_in_any_chunk(dp: Harness) -> None:
    entries = fill(dp)
    want = {bytes(k) for k, _ in entries}
    for chunk in (1, 7, 512, 100_000):
        reader = dp.maps["conntrack"].batches(chunk)
        seen: list[bytes] = []
        while not reader.done:
            n, keys, values = reader.next()
            assert len(keys) == n * 44 and len(values) == n * 24
            seen += [keys[i * 44:(i + 1) * 44] for i in range(n)]
        assert len(seen) == len(want) and set(seen) == want, chunk


def test_batch_delete_passes_over_keys_already_gone(dp: Harness) -> None:
    entries = fill(dp, 100)
    ct = dp.maps["conntrack"]
    ct.delete(entries[3][0])
    ct.delete(entries[50][0])
    keys = b"".join(bytes(k) for k, _ in entries[:60])
    assert ct.delete_batch(keys, 60) == 58
    assert ct.count() == 40


def test_revocation_cuts_what_the_reference_walk_cuts(dp: Harness) -> None:
    rng = random.Random(3)
    allowed = {(ep, str(p)) for ep in range(1, 21) for p in [f"10.1.{rng.randrange(20)}.{rng.randrange(250)}"]}

    def still_allowed(c) -> bool:  # noqa: ANN001
        return c.endpoint_id % 3 != 0 or (c.endpoint_id, str(c.peer)) in allowed

    fill(dp, services_every=97)
    n_ref = revoke_connections(dp.maps, still_allowed, {5}, recheck_services=True)
    ref = snapshot(dp)
    fill(dp, services_every=97)
    r = revoke(dp.maps, Affected.everything({5}), still_allowed, recheck_services=True, chunk=333)
    assert r.revoked == n_ref and snapshot(dp) == ref
    assert r.rechecked and all(CtEntry.from_buffer_copy(v).flags & CT_F_RECHECK
                               for v in ref.values() if CtEntry.from_buffer_copy(v).flags & CT_F_SERVICE)


def test_only_affected_entries_are_judged(dp: Harness) -> None:
    fill(dp)
    judged = []

    def deny(c) -> bool:  # noqa: ANN001
        judged.append(c)
        return False

    r = revoke(dp.maps, Affected(directions={(4, 1)}, peers={ipaddress.ip_network("10.1.2.0/24")}), deny)
    assert judged and all((c.endpoint_id == 4 and c.origin_egress) or str(c.peer).startswith("10.1.2.")
                          for c in judged)
    expected = sum(1 for i in range(N) if (1 + i % 20 == 4 and i % 2 == 1) or i // 250 == 2)
    assert r.revoked == r.judged == expected
    assert dp.maps["conntrack"].count() == N - expected


def test_a_newer_state_restarts_the_walk_with_both_changes(dp: Harness) -> None:
    fill(dp)
    job = Revocation(dp.maps, Affected(endpoints={1}), lambda c: True, chunk=500)
    assert not job.step()
    job.restart(Affected(endpoints={2}), lambda c: c.endpoint_id not in (1, 2), recheck_services=False)
    job.run()
    assert job.result.revoked == 2 * N // 20
    assert all(v.endpoint_id not in (1, 2) for _, v in dp.maps["conntrack"].items())
