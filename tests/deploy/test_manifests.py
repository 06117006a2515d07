"""deploy/ without a cluster: every YAML parsed with yaml.safe_load_all and
checked field by field (RBAC, the DaemonSet's security and host access,
probes, kustomization), the Containerfile, and shellcheck of the entrypoint."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from enforcer.cli import DEFAULT_SOCKET, build_parser

from .conftest import DEPLOY, ROOT, deploy_yaml_files, load_docs, require_tool

NAMESPACE = "enforcer-system"
CAPABILITIES = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
READ_VERBS = ["get", "list", "watch"]
RBAC_RESOURCES = {
    ("", "namespaces"), ("", "pods"), ("", "services"), ("", "nodes"),
    ("networking.k8s.io", "networkpolicies"),
    ("discovery.k8s.io", "endpointslices"),
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
    ("policy.networking.k8s.io", "adminnetworkpolicies"),
    ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
HEALTH = "/usr/local/bin/enforcer-health"
ENTRYPOINT = "/usr/local/bin/enforcer-entrypoint"
PRIVILEGED_REASON = "enforcer/privileged-reason."


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in deploy_yaml_files():
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in load_docs(path))
    return out


def one(kind: str) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kustomization() -> dict[str, Any]:
    (doc,) = load_docs(DEPLOY / "kustomization.yaml")
    return doc


@pytest.fixture(scope="module")
def ds() -> dict[str, Any]:
    return one("DaemonSet")


@pytest.fixture(scope="module")
def pod(ds) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def main(pod) -> dict[str, Any]:
    (c,) = [c for c in pod["containers"] if c["name"] == "enforcer"]
    return c


@pytest.fixture(scope="module")
def init(pod) -> dict[str, Any]:
    (c,) = [c for c in pod.get("initContainers", []) if c["name"] == "mount-bpffs"]
    return c


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (v,) = [v for v in pod["volumes"] if v["name"] == name]
    return v


def mount(container: dict[str, Any], name: str) -> dict[str, Any]:
    (m,) = [m for m in container.get("volumeMounts", []) if m["name"] == name]
    return m


# --------------------------------------------------------------------------
# Every document
# --------------------------------------------------------------------------

def test_every_yaml_parses_and_is_a_kubernetes_object():
    files = deploy_yaml_files()
    assert {p.name for p in files} >= {"kustomization.yaml", "daemonset.yaml", "clusterrole.yaml"}
    docs = manifests()
    assert docs
    for path, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert doc["metadata"].get("name"), path
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "enforcer", path
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], path
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, path


def test_namespace_admits_the_daemonset():
    ns = one("Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    # hostNetwork, hostPath, added capabilities: only the "privileged" level allows them.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# --------------------------------------------------------------------------
# RBAC: read-only, and only what the daemon reads
# --------------------------------------------------------------------------

def test_rbac_is_read_only_on_exactly_the_listed_resources():
    kinds = [d["kind"] for _, d in manifests()]
    assert kinds.count("ClusterRole") == 1
    assert "Role" not in kinds and "RoleBinding" not in kinds
    granted = set()
    for rule in one("ClusterRole")["rules"]:
        assert sorted(rule["verbs"]) == sorted(READ_VERBS) and len(rule["verbs"]) == 3, rule
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"no resourceNames/nonResourceURLs: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "/" not in resource, rule
                granted.add((group, resource))
    assert granted == RBAC_RESOURCES


def watched_resources() -> set[tuple[str, str]]:
    """(API group, resource) of every collection the Kubernetes source lists
    and watches, from the requests its kinds' list functions make."""
    import kubernetes

    from enforcer.sources.kubernetes import kinds
    from tests.kubeapi.fake_apiserver import FakeApiServer

    fake = FakeApiServer().start()
    try:
        cfg = kubernetes.client.Configuration()
        cfg.host = fake.url
        watched = kinds(kubernetes.client.ApiClient(cfg))
        for kind in watched:
            kind.list_fn(_preload_content=False, _request_timeout=10)
    finally:
        fake.stop()
    assert len({path for path, _ in fake.requests}) == len(watched)  # a collection of its own per kind
    out = set()
    for path, _ in fake.requests:
        parts = path.strip("/").split("/")  # api/v1/<resource> or apis/<group>/<version>/<resource>
        out.add(("", parts[2]) if parts[0] == "api" else (parts[1], parts[3]))
    return out


def test_rbac_grants_exactly_what_the_kubernetes_source_watches():
    granted = {(group, resource) for rule in one("ClusterRole")["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    watched = watched_resources()
    assert watched == granted, f"not granted: {watched - granted}; granted, never read: {granted - watched}"


def test_binding_ties_the_role_to_the_daemonsets_service_account(pod):
    sa, binding = one("ServiceAccount"), one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one("ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod.get("automountServiceAccountToken", True) is True  # in-cluster config


# --------------------------------------------------------------------------
# The DaemonSet, field by field
# --------------------------------------------------------------------------

def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


DAEMONSET_FIELDS = [
    ("spec.template.spec.hostNetwork", True),
    ("spec.template.spec.dnsPolicy", "ClusterFirstWithHostNet"),
    ("spec.template.spec.priorityClassName", "system-node-critical"),
    ("spec.updateStrategy.type", "RollingUpdate"),
    ("spec.updateStrategy.rollingUpdate.maxUnavailable", 1),
    ("spec.updateStrategy.rollingUpdate.maxSurge", 0),
    ("metadata.namespace", NAMESPACE),
]


@pytest.mark.parametrize("path,expected", DAEMONSET_FIELDS, ids=[p for p, _ in DAEMONSET_FIELDS])
def test_daemonset_field(ds, path, expected):
    assert _get(ds, path) == expected


def test_termination_grace_period_is_set(pod):
    assert isinstance(pod.get("terminationGracePeriodSeconds"), int)
    assert 5 <= pod["terminationGracePeriodSeconds"] <= 120


def test_selector_matches_template(ds):
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_tolerates_every_taint_including_control_plane(pod):
    # An empty key with operator Exists tolerates every taint of every effect.
    assert {"operator": "Exists"} in pod["tolerations"]


def test_main_container_capabilities_exactly(main):
    sc = main["securityContext"]
    assert sc["capabilities"]["add"] == CAPABILITIES
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["privileged"] is False
    assert sc.get("allowPrivilegeEscalation") is False


def test_every_capability_is_explained_in_the_manifest_and_readme():
    text = (DEPLOY / "daemonset.yaml").read_text()
    readme = (DEPLOY / "README.md").read_text()
    for cap in CAPABILITIES:
        assert re.search(rf"#\s+{cap}\s+\S", text), f"no comment on {cap} in daemonset.yaml"
        assert f"`{cap}`" in readme or f"CAP_{cap}" in readme, f"deploy/README.md does not explain {cap}"


def test_no_container_is_privileged_without_a_written_reason(ds, pod):
    annotations = ds["spec"]["template"]["metadata"].get("annotations", {})
    for c in all_containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            reason = annotations.get(PRIVILEGED_REASON + c["name"], "")
            assert len(reason.split()) >= 10, f"privileged container {c['name']} needs a reason annotation"
        # Kubernetes admits Bidirectional propagation in privileged containers only.
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert sc.get("privileged") is True, (c["name"], m)
        caps = sc.get("capabilities", {}).get("add", [])
        assert "SYS_ADMIN" not in caps and "ALL" not in caps, c["name"]


def test_privileged_init_container_only_mounts_bpffs(init):
    assert init["command"] == [ENTRYPOINT, "mount-bpffs"]
    assert [m["name"] for m in init["volumeMounts"]] == ["bpffs"]
    assert mount(init, "bpffs") == {"name": "bpffs", "mountPath": "/sys/fs/bpf",
                                    "mountPropagation": "Bidirectional"}
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    assert '"${1:-}" = mount-bpffs' in entrypoint


HOST_PATHS = [
    # volume, host path, mount path in the main container, read-only
    ("bpffs", "/sys/fs/bpf", "/sys/fs/bpf", False),
    ("lib-modules", "/lib/modules", "/host/lib/modules", True),
    ("usr-src", "/usr/src", "/host/usr/src", True),
    ("run-enforcer", "/run/enforcer", "/run/enforcer", False),
    ("state", "/var/lib/enforcer", "/var/lib/enforcer", False),
]


@pytest.mark.parametrize("name,host_path,mount_path,read_only", HOST_PATHS, ids=[h[0] for h in HOST_PATHS])
def test_host_path_volume_and_mount(pod, main, name, host_path, mount_path, read_only):
    assert volume(pod, name)["hostPath"]["path"] == host_path
    m = mount(main, name)
    assert m["mountPath"] == mount_path
    assert m.get("readOnly", False) is read_only


def test_no_other_host_paths(pod):
    host = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {h[1] for h in HOST_PATHS}


def test_bpffs_reaches_the_daemon_from_the_host(main):
    assert mount(main, "bpffs")["mountPropagation"] == "HostToContainer"


def test_header_mounts_are_where_the_entrypoint_looks():
    text = (DEPLOY / "entrypoint.sh").read_text()
    assert "HOST_ROOT=${ENFORCER_HOST_ROOT:-/host}" in text
    assert "MODULES_DIR=${ENFORCER_MODULES_DIR:-/lib/modules}" in text
    assert "BPFFS=${ENFORCER_BPFFS:-/sys/fs/bpf}" in text


def test_api_socket_directory_is_the_host_path(main):
    assert str(Path(DEFAULT_SOCKET).parent) == mount(main, "run-enforcer")["mountPath"]


def test_flow_history_is_on_the_host_path(main):
    args = build_parser().parse_args(["run", "--source", "kubernetes", "--node", "n1", *main.get("args", [])])
    assert args.state_dir == mount(main, "state")["mountPath"]


def test_node_name_from_the_downward_api(main):
    env = {e["name"]: e for e in main["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    assert 'exec "$ENFORCER" run --source kubernetes --node "$NODE_NAME" "$@"' in entrypoint


def test_args_are_flags_of_enforcer_run(main):
    """What the entrypoint execs parses with the daemon's own parser."""
    args = build_parser().parse_args(["run", "--source", "kubernetes", "--node", "n1", *main.get("args", [])])
    assert args.source == "kubernetes" and args.node == "n1"
    assert args.socket == DEFAULT_SOCKET
    ports = {p["name"]: p for p in main["ports"]}
    assert ports["metrics"]["containerPort"] == args.metrics_port != 0


def test_every_container_has_requests_and_limits(pod):
    for c in all_containers(pod):
        for key in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][key].keys(), (c["name"], key)


PROBES = [
    # probe, accepts NOT_SERVING (liveness semantics)
    ("startupProbe", True),
    ("livenessProbe", True),
    ("readinessProbe", False),
]


@pytest.mark.parametrize("probe,any_answer", PROBES, ids=[p for p, _ in PROBES])
def test_probe_calls_the_grpc_health_service(main, probe, any_answer):
    spec = main[probe]
    assert set(spec) & {"exec", "grpc", "httpGet", "tcpSocket"} == {"exec"}
    command = spec["exec"]["command"]
    assert command[0] == HEALTH
    assert ("--any-answer" in command) is any_answer
    assert spec["timeoutSeconds"] >= 3 and spec["periodSeconds"] >= 1
    health = (DEPLOY / "health.py").read_text()
    assert "from grpc_health.v1 import health_pb2, health_pb2_grpc" in health
    assert "HealthStub(channel).Check(" in health
    assert f'DEFAULT_SOCKET = "{DEFAULT_SOCKET}"' in health


def test_health_script_is_installed_where_the_probes_run_it():
    assert f"COPY deploy/health.py {HEALTH}" in (DEPLOY / "Containerfile").read_text()


def test_one_image_for_all_containers_is_the_kustomized_one(pod):
    images = {c["image"] for c in all_containers(pod)}
    assert len(images) == 1
    (image,) = images
    name, tag = image.rsplit(":", 1)
    (entry,) = kustomization()["images"]
    assert entry["name"] == name
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert entry["newTag"] == tag == version
    for c in all_containers(pod):
        assert c["imagePullPolicy"] == "IfNotPresent"


# --------------------------------------------------------------------------
# kustomization.yaml
# --------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_nothing_else():
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    present = {str(p.relative_to(DEPLOY)) for p in deploy_yaml_files() if p.name != "kustomization.yaml"}
    assert set(listed) == present
    assert kustomization()["apiVersion"] == "kustomize.config.k8s.io/v1beta1"


def test_kustomize_renders_with_kubectl():
    """`kubectl kustomize deploy/` (offline; kubectl from Debian's
    kubernetes-client, which scripts/setup.sh installs): every manifest,
    each exactly as written except its images, which are the
    kustomization's."""
    kubectl = require_tool("kubectl", "kubernetes-client")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
                for d in yaml.safe_load_all(out.stdout) if d}
    (entry,) = kustomization()["images"]
    image = f"{entry['newName']}:{entry['newTag']}"
    expected = {}
    for _, doc in manifests():
        doc = copy.deepcopy(doc)
        if doc["kind"] == "DaemonSet":
            for c in all_containers(doc["spec"]["template"]["spec"]):
                assert c["image"].rsplit(":", 1)[0] == entry["name"], c["image"]
                c["image"] = image
        expected[(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])] = doc
    assert rendered.keys() == expected.keys()
    for key, doc in expected.items():
        assert rendered[key] == doc, key
    (ds,) = [d for (kind, _, _), d in rendered.items() if kind == "DaemonSet"]
    assert {c["image"] for c in all_containers(ds["spec"]["template"]["spec"])} == {image}


# --------------------------------------------------------------------------
# Containerfile
# --------------------------------------------------------------------------

def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    return [(entry.split(None, 1)[0].upper(), entry.split(None, 1)[1] if " " in entry.strip() else "")
            for entry in logical]


def run_commands() -> list[list[str]]:
    """Every simple command of every RUN, split on && ; |."""
    out = []
    for instr, args in containerfile_instructions():
        if instr != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, "&&"]:
            if token in ("&&", "||", ";", "|", ">", ">>", "(", ")"):
                if words:
                    out.append(words[1:] if words[0] == "!" else words)
                words = []
            else:
                words.append(token)
    return out


def test_base_is_debian_bookworm():
    (base,) = [a for i, a in containerfile_instructions() if i == "FROM"]
    assert re.fullmatch(r"(docker\.io/)?(library/)?debian:bookworm(-slim)?", base.strip())


def test_apt_installs_bcc_from_debian():
    installs = [w for w in run_commands() if w[:2] == ["apt-get", "install"]]
    assert installs
    packages = {w for cmd in installs for w in cmd[2:] if not w.startswith("-")}
    assert {"python3", "python3-bpfcc", "iproute2", "kmod", "python3-venv"} <= packages


def test_pip_never_installs_the_pypi_bcc():
    pips = [w for w in run_commands() if "pip" in w and "install" in w]
    assert pips
    for cmd in pips:
        for word in cmd[cmd.index("install") + 1:]:
            assert not re.match(r"bcc($|[=<>!~\[])", word, re.I), cmd
    text = (DEPLOY / "Containerfile").read_text()
    assert not re.search(r"pip3?\s+install[^\n]*\sbcc(\s|$)", text)


def test_venv_sees_debians_bcc_and_the_project_is_installed_from_its_source():
    cmds = run_commands()
    venvs = [c for c in cmds if c[1:3] == ["-m", "venv"]]
    assert venvs and "--system-site-packages" in venvs[0]
    venv = venvs[0][-1]
    (install,) = [c for c in cmds if c[0] == f"{venv}/bin/python" and "install" in c and "-e" in c]
    source = install[-1]
    # The loader reads bpf/ next to the package (enforcer/datapath/source.py),
    # so the install is editable from a tree that has bpf/.
    copies = {a.split()[-1].rstrip("/") for i, a in containerfile_instructions() if i == "COPY"}
    workdirs = [a.strip() for i, a in containerfile_instructions() if i == "WORKDIR"]
    assert workdirs[0] == source
    assert {"bpf", "enforcer", "proto"} <= copies
    assert not [c for c in copies if c.split("/")[0] == "tests"], "test support stays out of the image"


def test_every_copied_path_exists():
    for instr, args in containerfile_instructions():
        if instr == "COPY":
            *sources, _dest = args.split()
            for s in sources:
                assert (ROOT / s).exists(), s


def test_entrypoint_is_the_script():
    instrs = containerfile_instructions()
    assert f"COPY deploy/entrypoint.sh {ENTRYPOINT}" in [f"{i} {a}" for i, a in instrs]
    (entry,) = [a for i, a in instrs if i == "ENTRYPOINT"]
    assert entry.strip() == f'["{ENTRYPOINT}"]'


# --------------------------------------------------------------------------
# entrypoint.sh
# --------------------------------------------------------------------------

def test_entrypoint_passes_shellcheck(shellcheck):
    proc = subprocess.run([shellcheck, "--severity=style", str(DEPLOY / "entrypoint.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable():
    for script in [DEPLOY / "entrypoint.sh", DEPLOY / "health.py", *sorted((DEPLOY / "vagrant").glob("*.sh"))]:
        assert script.stat().st_mode & 0o111, script

