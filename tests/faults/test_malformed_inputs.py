"""Malformed and hostile manifests on the real daemon, all at once, on the
wire. Each one would, if read loosely, let c reach b (or open b to every
peer); every one must be named in the status, open nothing (c -> b stays
denied), and cost nothing else (a -> b, a -> c and d -> a keep working).

Policy objects that do not validate are enforced fail-closed (README:
"Invalid input never opens traffic"); files that cannot be read or parsed
keep their last readable content, here none."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.daemon.conftest import make_daemon_lab
from tests.daemon.harness import DENIED, NAMESPACE, OK, Flow, allow_from, policy

pytestmark = pytest.mark.lab

# What a loose reader would make of most entries: b open to c.
OPEN_B = policy("open-b", "b", ingress=[allow_from("c", ("tcp", 80))])


def spec_with(**changes: object) -> dict:
    doc = json.loads(json.dumps(OPEN_B))
    doc["spec"].update(changes)
    return doc


def rule_with(**changes: object) -> dict:
    doc = json.loads(json.dumps(OPEN_B))
    doc["spec"]["ingress"][0].update(changes)
    return doc


def named(name: str, doc: dict) -> str:
    doc = json.loads(json.dumps(doc))
    doc["metadata"]["name"] = name
    return yaml.safe_dump(doc)


def elsewhere(text: str) -> str:
    doc = yaml.safe_load(text)
    doc["metadata"]["namespace"] = "other"
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}) + "---\n" \
        + yaml.safe_dump(doc)


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))

# (file, content, what the status must name for it)
BAD_FILES: list[tuple[str, bytes | str, str]] = [
    ("bad-cidr.yaml", named("bad-cidr", rule_with(**{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]})),
     f"NetworkPolicy {NAMESPACE}/bad-cidr"),
    ("bad-except.yaml", named("bad-except", rule_with(**{"from": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                                               "except": ["not-a-cidr"]}}]})),
     f"NetworkPolicy {NAMESPACE}/bad-except"),
    ("unknown-field.yaml", named("unknown-field", spec_with(allowEverything=True)),
     f"NetworkPolicy {NAMESPACE}/unknown-field"),
    ("bad-port.yaml", named("bad-port", rule_with(ports=[{"port": 70000}])), f"NetworkPolicy {NAMESPACE}/bad-port"),
    ("bad-endport.yaml", named("bad-endport", rule_with(ports=[{"endPort": 90}])),
     f"NetworkPolicy {NAMESPACE}/bad-endport"),
    ("bad-protocol.yaml", named("bad-protocol", rule_with(ports=[{"protocol": "ICMP", "port": 80}])),
     f"NetworkPolicy {NAMESPACE}/bad-protocol"),
    ("bad-operator.yaml", named("bad-operator", rule_with(**{"from": [{"podSelector": {"matchExpressions": [
        {"key": "pod", "operator": "Like", "values": ["c"]}]}}]})), f"NetworkPolicy {NAMESPACE}/bad-operator"),
    # An unreadable selector isolates its whole namespace (it might select
    # any pod): here another namespace's, which must cost this one nothing.
    ("bad-selector.yaml", elsewhere(named("bad-selector", spec_with(podSelector="everything"))),
     "NetworkPolicy other/bad-selector"),
    ("wrong-version.yaml", named("wrong-version", dict(OPEN_B, apiVersion="networking.k8s.io/v2")),
     "wrong-version"),
    ("syntax.yaml", "kind: NetworkPolicy\nmetadata: {name: syntax\n  namespace: default\n", "syntax.yaml"),
    ("truncated.json", json.dumps(OPEN_B)[:-20], "truncated.json"),
    ("not-utf8.yaml", b"\xff\xfe" + named("not-utf8", OPEN_B).encode("utf-16-le")[:200] + b"\x80\x81", "not-utf8.yaml"),
    ("empty.yaml", "", "empty.yaml"),
    ("alias-bomb.yaml", BOMB, "alias-bomb.yaml"),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"),
    ("wrong-kind.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "cm", "namespace": NAMESPACE}}), "ConfigMap"),
    ("duplicate.yaml", named("dup", policy("dup", "b", ingress=[allow_from("a", ("tcp", 80))])) + "---\n"
     + named("dup", OPEN_B), "dup"),
    ("bad-pod.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost",
                                     "namespace": NAMESPACE, "labels": {"pod": "c"}},
                                     "spec": {"nodeName": "lab-node"},
                                     "status": {"phase": "Running", "podIP": "10.244.0.999"}}), "ghost"),
]
HUGE = 50 * 1024 * 1024


def test_every_bad_input_is_named_and_opens_nothing(request):
    env = make_daemon_lab(request, "m", ["a", "b", "c", "d"])
    env.write_policy(policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80))]))
    env.sync()
    policies = env.source / "policies"
    for name, content, _ in BAD_FILES:
        path = policies / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    # A 50 MB file (past --max-manifest-bytes), a FIFO, a directory named
    # like a manifest (walked into, as any directory), and a link back to
    # the directory itself (walked once).
    with open(policies / "huge.yaml", "wb") as f:
        f.write(named("huge", OPEN_B).encode())
        f.truncate(HUGE)
    os.mkfifo(policies / "fifo.yaml")
    (policies / "dir.yaml").mkdir()
    (policies / "loop").symlink_to("..")
    expected = [what for _, _, what in BAD_FILES] + ["huge.yaml", "fifo.yaml"]
    status = env.wait_status(lambda st: all(any(w in e for e in st.get("errors", [])) for w in expected),
                             timeout=30)
    # The duplicate is named as such (the last in path order stands, as
    # `kubectl apply -f DIR` would leave it: here the one opening b, which
    # is the author's own choice, so it is removed before probing).
    assert any("NetworkPolicy default/dup: defined 2 times" in e for e in status["errors"]), status["errors"]
    (policies / "duplicate.yaml").write_text(named("dup", policy("dup", "b", ingress=[allow_from("a", ("tcp", 80))])))
    env.wait_status(lambda st: not any("dup" in e for e in st.get("errors", [])), timeout=30)
    env.check_flows([Flow("c", "b", 80, "tcp", DENIED), Flow("d", "b", 80, "tcp", DENIED),
                     Flow("a", "b", 80, "tcp", OK), Flow("a", "c", 80, "tcp", OK),
                     Flow("d", "a", 80, "tcp", OK)], 4)
    # The source keeps polling: a good change after all of this applies.
    # (The daemon's revision is that of the content in force, which the
    # unreadable files are not part of: wait for it to move.)
    before = env.daemon.status()["source_revision"]  # type: ignore[union-attr]
    env.write_policy(policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80)), allow_from("d", ("tcp", 80))]))
    env.wait_status(lambda st: st.get("source_revision") != before, timeout=30)
    env.check_flows([Flow("d", "b", 80, "tcp", OK), Flow("c", "b", 80, "tcp", DENIED)], 4)
    # The log stays bounded: no line per poll for the files that stay bad.
    assert len(env.daemon.log_tail(100000).splitlines()) < 400  # type: ignore[union-attr]
