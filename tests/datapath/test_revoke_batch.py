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


def test_a_newer_state_is_folded_into_the_walk_under_way(dp: Harness) -> None:
    """A newer state (what changed since the one being judged: endpoint 2)
    comes after the first slice: the rest of the walk judges against it for
    both changes, then a second round judges the entries walked before it
    came for its change only. Endpoint 1's entries were judged against the
    older state, whose verdict for them the newer state did not change."""
    entries = fill(dp)
    job = Revocation(dp.maps, Affected(endpoints={1}), lambda c: c.endpoint_id != 1 or c.peer_port % 2 == 0,
                     chunk=500)
    assert not job.step()
    job.restart(Affected(endpoints={2}),
                lambda c: (c.endpoint_id != 1 or c.peer_port % 2 == 0) and c.endpoint_id != 2, recheck_services=False)
    job.run()
    left = [(v.endpoint_id, socket.ntohs(k.peer_port)) for k, v in dp.maps["conntrack"].items()]
    assert not [1 for ep, port in left if ep == 2]
    assert not [1 for ep, port in left if ep == 1 and port % 2]
    expected_cut = sum(1 for k, v in entries
                       if v.endpoint_id == 2 or (v.endpoint_id == 1 and socket.ntohs(k.peer_port) % 2))
    assert job.result.revoked == expected_cut == N - len(left)
    # The rest of the first round, then a second round over what is left.
    assert N < job.result.walked <= 2 * N - job.result.revoked + 500


def test_a_stream_of_newer_states_cannot_keep_a_cut_from_coming(dp: Harness) -> None:
    """A newer state after every slice, forever: a connection a state
    denies is still cut within two rounds of slices after it came (each
    round moves forward; starting over at each state never would)."""
    fill(dp)
    ct = dp.maps["conntrack"]
    rounds = -(-N // 500)
    job = Revocation(dp.maps, Affected(endpoints={1}), lambda c: True, chunk=500)
    denied: set[int] = set()
    for step in range(4 * rounds):
        job.step()
        if step == rounds // 2:
            denied.add(7)  # this state denies endpoint 7's connections
        deny = frozenset(denied)
        job.restart(Affected(endpoints={7} if step == rounds // 2 else {1 + step % 5}),
                    lambda c, deny=deny: c.endpoint_id not in deny, recheck_services=False)
        if step >= rounds // 2 + 2 * rounds + 1:
            assert not [1 for _, v in ct.items() if v.endpoint_id == 7], f"not cut {step - rounds // 2} slices after"


def test_connections_sharing_a_verdict_key_share_one_evaluation(dp: Harness) -> None:
    """Clients' connections to one server port differ only in the client's
    port: judged once. The port the connection was opened to, the peer,
    the direction or the endpoint each make another verdict."""
    ct = dp.maps["conntrack"]
    ct.clear()
    keys, values = bytearray(), bytearray()
    n = 0
    for peer in ("10.1.0.1", "10.1.0.2"):
        for origin, pod_ports, peer_ports in ((0, (80, 81), range(2000, 2300)),  # ingress: to the pod's 80, 81
                                              (1, range(3000, 3003), (53, 5353))):  # egress: to the peer's 53, 5353
            for pod_port in pod_ports:
                for peer_port in peer_ports:
                    keys += bytes(CtKey(pod=addr_bytes(ipaddress.ip_address("10.0.0.1")),
                                        peer=addr_bytes(ipaddress.ip_address(peer)), ifindex=1,
                                        pod_port=socket.htons(pod_port), peer_port=socket.htons(peer_port),
                                        family=FAMILY_V4, proto=6))
                    values += bytes(CtEntry(expires_ns=1 << 62, endpoint_id=7, origin=origin))
                    n += 1
    assert ct.update_batch(bytes(keys), bytes(values), n) == n
    calls = []

    def allowed(c) -> bool:  # noqa: ANN001
        calls.append(c)
        return (c.pod_port if not c.origin_egress else c.peer_port) in (80, 53) and str(c.peer) == "10.1.0.1"

    r = revoke(dp.maps, Affected(endpoints={7}), allowed, chunk=97)
    # 2 peers x (2 ingress ports + 2 egress ports): 8 verdicts for 2 x (600 + 6) connections
    assert r.judged == n == 1212 and r.evaluated == len(calls) == 8
    kept = [(socket.ntohs(k.pod_port), socket.ntohs(k.peer_port), v.origin) for k, v in ct.items()]
    assert len(kept) == 300 + 3 and r.revoked == n - len(kept)
    assert all((o == 0 and pp == 80) or (o == 1 and qp == 53) for pp, qp, o in kept)
