"""The compiler carries work over between compilations; what it produces
must always be what a fresh compiler makes of the same snapshot. Random
sequences of changes of every kind (including the awkward ones: addresses
claimed twice, uids shared, pods moving node, ipBlocks over pod addresses,
namespaces relabelled or gone, interfaces coming late), each compiled both
ways and compared field by field."""

from __future__ import annotations

import copy
import ipaddress
import random

import pytest

from enforcer.compiler.compile import Compiler, DesiredState, NodeContext
from enforcer.datapath.sync import MapContents, MapSync
from enforcer.model.state import ClusterStore

from .cluster import namespace, pod, policy

NODE = "n1"
NAMESPACES = ["x", "y", "z"]
LABELS = [{"app": "web"}, {"app": "web", "tier": "fe"}, {"app": "db", "tier": "be"}, {"app": "db"},
          {"tier": "be"}, {}]
PORT_SETS = [
    [("http", 80, "TCP"), ("dns", 53, "UDP")],
    [("http", 8080, "TCP")],
    [("db", 5432, "TCP"), ("http", 81, "TCP")],
    [],
]
SELECTORS = [{}, {"matchLabels": {"app": "web"}}, {"matchLabels": {"tier": "be"}},
             {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
             {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
             {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}]
NS_SELECTORS = [{}, {"matchLabels": {"team": "a"}}, {"matchLabels": {"kubernetes.io/metadata.name": "z"}},
                {"matchExpressions": [{"key": "team", "operator": "Exists"}]}]
BLOCKS = [{"cidr": "10.0.0.0/8"}, {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]},
          {"cidr": "10.0.1.0/24", "except": ["10.0.1.0/30"]}, {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
          {"cidr": "fd00::/64"}, {"cidr": "192.0.2.0/24"}, {"cidr": "10.0.1.2/32"}]
PORTS = [[], [{"port": 80}], [{"port": "http"}], [{"protocol": "UDP", "port": "dns"}],
         [{"port": 1000, "endPort": 1100}], [{"protocol": "SCTP"}], [{"port": "db"}, {"port": 443}]]


def random_peer(rng: random.Random) -> dict:
    kind = rng.randrange(4)
    if kind == 0:
        return {"ipBlock": rng.choice(BLOCKS)}
    if kind == 1:
        return {"podSelector": rng.choice(SELECTORS)}
    if kind == 2:
        return {"namespaceSelector": rng.choice(NS_SELECTORS)}
    return {"namespaceSelector": rng.choice(NS_SELECTORS), "podSelector": rng.choice(SELECTORS)}


def random_rule(rng: random.Random, peers_field: str) -> dict:
    rule: dict = {}
    if rng.random() < 0.8:
        rule[peers_field] = [random_peer(rng) for _ in range(rng.choice([1, 1, 2]))]
    if rng.random() < 0.7:
        rule["ports"] = rng.choice(PORTS)
    return rule


def random_policy(rng: random.Random, name: str) -> dict:
    spec: dict = {"podSelector": rng.choice(SELECTORS)}
    if rng.random() < 0.7:
        spec["ingress"] = [random_rule(rng, "from") for _ in range(rng.randrange(3))]
    if rng.random() < 0.5:
        spec["egress"] = [random_rule(rng, "to") for _ in range(rng.randrange(3))]
    if rng.random() < 0.3:
        spec["policyTypes"] = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    if rng.random() < 0.03:
        spec["ingress"] = [{"from": [{"ipBlock": {"cidr": "nope"}}]}]  # invalid rule
    if rng.random() < 0.02:
        spec["podSelector"] = {"matchExpressions": [{"key": "a", "operator": "Near"}]}  # fail closed
    return policy(rng.choice(NAMESPACES), name, spec)


class World:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.namespaces = {n: namespace(n, {"team": "a"} if n == "x" else {}) for n in NAMESPACES}
        self.pods: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.ifindex: dict[str, int] = {}
        self.addresses = [ipaddress.ip_address("10.9.0.1")]
        self.serial = 0
        for _ in range(14):
            self.new_pod()
        for _ in range(8):
            self.new_policy()

    def objects(self) -> list[dict]:
        return [*self.namespaces.values(), *self.pods.values(), *self.policies.values()]

    def new_pod(self) -> None:
        rng = self.rng
        self.serial += 1
        ns = rng.choice(NAMESPACES)
        host = rng.randrange(1, 12)  # few addresses: some are claimed twice
        ips = [f"10.0.{rng.choice([1, 1, 2])}.{host}"]
        if rng.random() < 0.4:
            ips.append(f"fd00::{host:x}")
        raw = pod(f"{ns}/p{self.serial}", dict(rng.choice(LABELS)), ips, rng.choice([NODE, NODE, "n2"]),
                  rng.choice(PORT_SETS))
        if rng.random() < 0.05:
            raw["metadata"]["uid"] = "uid-shared"
        if rng.random() < 0.05:
            raw["spec"]["hostNetwork"] = True
        if rng.random() < 0.05:
            raw["status"]["phase"] = "Succeeded"
        self.pods[f"{ns}/p{self.serial}"] = raw

    def new_policy(self) -> None:
        self.serial += 1
        raw = random_policy(self.rng, f"np{self.serial}")
        self.policies[f"{raw['metadata']['namespace']}/np{self.serial}"] = raw

    def change(self, store: ClusterStore) -> str:
        rng = self.rng
        kind = rng.choice(["pod_new", "pod_delete", "pod_labels", "pod_node", "pod_phase", "policy_new",
                           "policy_delete", "policy_edit", "ns_labels", "ns_delete", "interface", "node_addr",
                           "replace_all"])
        if kind == "pod_new" or (kind.startswith("pod_") and not self.pods):
            self.new_pod()
            key = list(self.pods)[-1]
            store.upsert(self.pods[key])
        elif kind == "pod_delete":
            key = rng.choice(list(self.pods))
            raw = self.pods.pop(key)
            store.delete("Pod", raw["metadata"]["namespace"], raw["metadata"]["name"])
        elif kind in ("pod_labels", "pod_node", "pod_phase"):
            key = rng.choice(list(self.pods))
            raw = copy.deepcopy(self.pods[key])
            if kind == "pod_labels":
                raw["metadata"]["labels"] = dict(rng.choice(LABELS))
            elif kind == "pod_node":
                raw["spec"]["nodeName"] = NODE if raw["spec"]["nodeName"] != NODE else "n2"
            else:
                raw["status"]["phase"] = rng.choice(["Running", "Succeeded", "Running"])
            self.pods[key] = raw
            store.upsert(raw)
        elif kind == "policy_new" or (kind.startswith("policy_") and not self.policies):
            self.new_policy()
            store.upsert(list(self.policies.values())[-1])
        elif kind == "policy_delete":
            key = rng.choice(list(self.policies))
            raw = self.policies.pop(key)
            store.delete("NetworkPolicy", raw["metadata"]["namespace"], raw["metadata"]["name"])
        elif kind == "policy_edit":
            key = rng.choice(list(self.policies))
            old = self.policies[key]
            raw = random_policy(self.rng, old["metadata"]["name"])
            raw["metadata"]["namespace"] = old["metadata"]["namespace"]
            self.policies[key] = raw
            store.upsert(raw)
        elif kind == "ns_labels":
            name = rng.choice(NAMESPACES)
            self.namespaces[name] = namespace(name, rng.choice([{}, {"team": "a"}, {"team": "b"}]))
            store.upsert(self.namespaces[name])
        elif kind == "ns_delete":
            name = rng.choice(NAMESPACES)
            self.namespaces.pop(name, None)
            store.delete("Namespace", None, name)
        elif kind == "interface":
            key = rng.choice(list(self.pods))
            if key in self.ifindex and rng.random() < 0.5:
                del self.ifindex[key]
            else:
                self.ifindex[key] = rng.randrange(100, 120)
        elif kind == "node_addr":
            self.addresses = [ipaddress.ip_address(rng.choice(["10.9.0.1", "10.0.1.3", "fd00::9"]))]
        else:
            store.replace_all(self.objects(), [])
        return kind

    def node(self) -> NodeContext:
        # Most local pods have an interface; some come late.
        interfaces = {k: 200 + i for i, k in enumerate(self.pods) if i % 5}
        interfaces.update(self.ifindex)
        return NodeContext(NODE, tuple(self.addresses), interfaces)


def fresh_compile(compiler: Compiler, snap, node: NodeContext,  # type: ignore[no-untyped-def]
                  endpoint_ids: dict[str, int] | None = None) -> DesiredState:
    """A fresh compiler's view, its endpoint ids seeded (as a restarted
    daemon seeds them) from `endpoint_ids`: the ids held before the
    compilation compared with, so both allocate the same way."""
    fresh = Compiler(compiler.endpoint_ids.max_id)
    seed = endpoint_ids if endpoint_ids is not None else compiler.endpoint_ids.items()
    for uid, ep_id in seed.items():
        fresh.endpoint_ids.seed(uid, ep_id)
    return fresh.compile(snap, node)


def assert_same(got: DesiredState, want: DesiredState, where: str) -> None:
    assert got.policy == want.policy, where
    assert got.ipcache == want.ipcache, where
    assert got.endpoints == want.endpoints, where
    assert got.rules == want.rules, where
    assert got.identities == want.identities, where
    assert got.selected_by == want.selected_by, where
    assert got.entries_by_policy == want.entries_by_policy, where
    assert [str(e) for e in got.errors] == [str(e) for e in want.errors], where
    assert got.unplaced == want.unplaced, where
    assert got.map_contents() == want.map_contents(), where


class _FakeMap:
    def __init__(self) -> None:
        self.d: dict = {}

    def update(self, key, value, flags=0) -> None:  # type: ignore[no-untyped-def]
        self.d[bytes(key)] = bytes(value)

    def delete(self, key) -> bool:  # type: ignore[no-untyped-def]
        return self.d.pop(bytes(key), None) is not None

    def items(self):  # type: ignore[no-untyped-def]
        return iter(())

    def keys(self):  # type: ignore[no-untyped-def]
        return iter(())


class FakeMaps:
    """In-memory stand-in for DatapathMaps: what MapSync writes, as bytes."""

    def __init__(self) -> None:
        self.m = {"policy": _FakeMap(), "endpoints": _FakeMap(), "endpoint_ids": _FakeMap()}
        self.frontends: set = set()  # type: ignore[type-arg]
        self.ipcache: dict = {}

    def __getitem__(self, name: str) -> _FakeMap:
        return self.m[name]

    def set_identity(self, net, ident) -> None:  # type: ignore[no-untyped-def]
        self.ipcache[net] = ident

    def delete_identity(self, net) -> bool:  # type: ignore[no-untyped-def]
        return self.ipcache.pop(net, None) is not None

    def identities(self) -> dict:
        return {}

    def set_endpoint_id(self, ep_id, ifindex, identity, flags) -> None:  # type: ignore[no-untyped-def]
        self.m["endpoint_ids"].d[ep_id] = (ifindex, identity, flags)

    def delete_endpoint_id(self, ep_id) -> bool:  # type: ignore[no-untyped-def]
        return self.m["endpoint_ids"].d.pop(ep_id, None) is not None

    def set_service(self, *frontend) -> None:  # type: ignore[no-untyped-def]
        self.frontends.add(frontend)

    def delete_service(self, *frontend) -> bool:  # type: ignore[no-untyped-def]
        if frontend not in self.frontends:
            return False
        self.frontends.remove(frontend)
        return True

    def services(self) -> set:  # type: ignore[type-arg]
        return set()


def written_by_fresh_sync(want: MapContents) -> FakeMaps:
    maps = FakeMaps()
    MapSync(maps).apply(MapContents(dict(want.ipcache), dict(want.endpoints), dict(want.policy),  # type: ignore[arg-type]
                                    dict(want.endpoint_ids), set(want.services)))
    return maps


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_fresh(seed):
    world = World(seed)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler(max_endpoint_id=8 if seed % 3 == 0 else 512)  # sometimes ids run out
    maps = FakeMaps()
    sync = MapSync(maps)  # type: ignore[arg-type]
    for step in range(150):
        kind = world.change(store) if step else "first"
        snap, node = store.snapshot(), world.node()
        before = compiler.endpoint_ids.items()
        got = compiler.compile(snap, node)
        assert_same(got, fresh_compile(compiler, snap, node, before), f"seed {seed} step {step} ({kind})")
        # The sync, told only what changed, leaves the maps as a full one would.
        want = got.map_contents()
        assert not sync.apply(want).failures
        assert sync.applied == want, f"seed {seed} step {step} ({kind})"
        full = written_by_fresh_sync(want)
        assert (maps.ipcache, maps.m["policy"].d, maps.m["endpoints"].d) == \
            (full.ipcache, full.m["policy"].d, full.m["endpoints"].d), f"seed {seed} step {step} ({kind})"
        if step % 10 == 9:  # nothing changed (endpoint ids released last time may be handed out now)
            before = compiler.endpoint_ids.items()
            again = compiler.compile(store.snapshot(), node)
            assert_same(again, fresh_compile(compiler, snap, node, before), f"seed {seed} step {step} again")
            if not any("no endpoint id left" in str(e) for e in got.errors):
                assert_same(again, got, f"seed {seed} step {step} again")


def test_id_tables_hold_only_what_is_compiled():
    world = World(99)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler()
    for _ in range(200):
        world.change(store)
        out = compiler.compile(store.snapshot(), world.node())
        assert set(compiler.identity_ids._by_key.values()) == set(out.identities)
        assert set(compiler.rule_ids._by_key.values()) == set(out.rules)


def test_node_rename_starts_over():
    world = World(5)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler()
    compiler.compile(store.snapshot(), world.node())
    other = NodeContext("n2", (), {k: 300 + i for i, k in enumerate(world.pods)})
    before = compiler.endpoint_ids.items()
    got = compiler.compile(store.snapshot(), other)
    assert_same(got, fresh_compile(compiler, store.snapshot(), other, before), "renamed node")
    assert set(compiler.identity_ids._by_key.values()) == set(got.identities)


def test_unchanged_inputs_reuse_the_last_result():
    """A pass with nothing new (a bookmark, a resync) costs no compilation:
    the same snapshot tables and node give the last result back; any table
    that changed, another node context, or a result still settling
    (staging, a pod waiting for an endpoint id) compiles."""
    world = World(5)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler()
    node = world.node()
    first = compiler.compile(store.snapshot(), node)
    store.set_source_revision("bookmark-1")
    assert compiler.compile(store.snapshot(), node) is first
    assert compiler.compile(store.snapshot(), NodeContext(node.name, node.addresses, {})) is not first
    world.change(store)
    changed = compiler.compile(store.snapshot(), node)
    assert changed is not first
    assert compiler.compile(store.snapshot(), node) is changed
    changed.pending.append("x/staged")  # as a pass staging a policy leaves it
    assert compiler.compile(store.snapshot(), node) is not changed
