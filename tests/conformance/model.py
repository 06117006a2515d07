"""The upstream Kubernetes e2e NetworkPolicy model, as data.

Ported from kubernetes/kubernetes test/e2e/network/netpol/ (see README.md in
this directory for the exact revisions read):

- model.go        NewModel: namespaces x, y, z; pods a, b, c in each; one
                  container per (port, protocol) pair the test case asks for,
                  named ``cont-<port>-<proto>``, serving one container port
                  named ``serve-<port>-<proto>``; pod labels ``{"pod": <name>}``;
                  one ClusterIP Service ``s-<ns>-<pod>`` per pod.
- kubemanager.go  namespaces are created with *no* labels of their own ("no
                  labels needed, we just need the default
                  kubernetes.io/metadata.name label"); the e2e framework adds
                  ``e2e-run`` and the pod-security labels.
- network_policy.go  getNamespaceBaseNames: upstream names the namespaces
                  ``<root>-x`` etc. plus a random suffix; this port uses
                  exactly "x", "y", "z".

Older upstream revisions (before the kubemanager rewrite) labelled every
namespace ``{"ns": <name>}``; the revision ported here does not, and no
policy in network_policy.go selects on ``ns``. Policies select namespaces
only through ``kubernetes.io/metadata.name`` (plus the ``ns2: updated`` label
one case adds at run time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

NAMESPACES: Final = ("x", "y", "z")
POD_NAMES: Final = ("a", "b", "c")
#: Every pod as "ns/pod", in upstream's order (namespace-major), 9 in all.
ALL_PODS: Final = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)

PORTS: Final = (80, 81)
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")

#: Set by the API server on every namespace (Kubernetes >= 1.21).
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
#: model.go podNameLabelKey().
POD_LABEL_KEY: Final = "pod"

#: Image the upstream containers run (test/utils/image, Agnhost). The tag
#: moves with upstream releases; it has no bearing on policy.
AGNHOST_IMAGE: Final = "registry.k8s.io/e2e-test-images/agnhost:2.52"

#: Labels the e2e framework puts on every namespace it creates
#: (framework.CreateNamespace + CreateTestingNS). network_policy.go sets
#: f.NamespacePodSecurityLevel = LevelBaseline; e2e-run is a per-run UUID
#: (a fixed placeholder here). No policy selects on any of these.
E2E_RUN_PLACEHOLDER: Final = "00000000-0000-0000-0000-000000000000"
FRAMEWORK_NAMESPACE_LABELS: Final[Mapping[str, str]] = {
    "e2e-run": E2E_RUN_PLACEHOLDER,
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/warn": "baseline",
    "pod-security.kubernetes.io/audit": "baseline",
}


def split_pod(pod: str) -> tuple[str, str]:
    """ "x/a" -> ("x", "a"), checked against the model."""
    ns, sep, name = pod.partition("/")
    if not sep or ns not in NAMESPACES or name not in POD_NAMES:
        raise ValueError(f"not a model pod: {pod!r} (expected one of {', '.join(ALL_PODS)})")
    return ns, name


@dataclass(frozen=True)
class Container:
    """One upstream container: serves exactly one port on one protocol."""

    port: int
    protocol: str

    def __post_init__(self) -> None:
        if self.port not in PORTS or self.protocol not in PROTOCOLS:
            raise ValueError(f"not a model container: {self.port}/{self.protocol}")

    @property
    def name(self) -> str:
        return f"cont-{self.port}-{self.protocol.lower()}"

    @property
    def port_name(self) -> str:
        """The named port policies can refer to, e.g. "serve-80-tcp"."""
        return f"serve-{self.port}-{self.protocol.lower()}"

    def command(self) -> list[str]:
        if self.protocol == "TCP":
            return ["/agnhost", "serve-hostname", "--tcp", "--http=false", "--port", str(self.port)]
        if self.protocol == "UDP":
            return ["/agnhost", "serve-hostname", "--udp", "--http=false", "--port", str(self.port)]
        return ["/agnhost", "porter"]

    def env(self) -> list[dict[str, str]]:
        if self.protocol == "SCTP":
            return [{"name": f"SERVE_SCTP_PORT_{self.port}", "value": "foo"}]
        return []

    def spec(self, image: str = AGNHOST_IMAGE) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "command": self.command(),
            "ports": [{"name": self.port_name, "containerPort": self.port, "protocol": self.protocol}],
            "imagePullPolicy": "IfNotPresent",
            "securityContext": {},
        }
        if env := self.env():
            spec["env"] = env
        return spec


def containers(ports: Sequence[int] = PORTS, protocols: Sequence[str] = PROTOCOLS) -> list[Container]:
    """model.go NewModel: for port in ports, for protocol in protocols."""
    return [Container(port, proto) for port in ports for proto in protocols]


def namespace_labels(namespace: str, *, framework_labels: bool = True) -> dict[str, str]:
    """The labels a model namespace carries when the test starts."""
    if namespace not in NAMESPACES:
        raise ValueError(f"not a model namespace: {namespace!r}")
    labels = dict(FRAMEWORK_NAMESPACE_LABELS) if framework_labels else {}
    labels[NAMESPACE_NAME_LABEL] = namespace
    return labels


def pod_labels(pod: str) -> dict[str, str]:
    """The labels a model pod carries when the test starts (model.go Labels)."""
    _, name = split_pod(pod)
    return {POD_LABEL_KEY: name}


def render_namespace(namespace: str, *, labels: Mapping[str, str] | None = None,
                     framework_labels: bool = True) -> dict[str, Any]:
    """A Namespace as the API returns it. ``labels`` replaces the initial
    labels (kubernetes.io/metadata.name is always forced, as the API server
    does)."""
    final = dict(labels) if labels is not None else namespace_labels(namespace, framework_labels=framework_labels)
    final[NAMESPACE_NAME_LABEL] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": final},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def render_pod(pod: str, *, ports: Sequence[int] = PORTS, protocols: Sequence[str] = PROTOCOLS,
               node_name: str | None = None, pod_ips: Mapping[str, Sequence[str]] | None = None,
               labels: Mapping[str, str] | None = None, image: str = AGNHOST_IMAGE) -> dict[str, Any]:
    """A Pod as the API returns it once running.

    ``pod_ips`` maps "ns/pod" to that pod's addresses (primary first, as in
    status.podIPs); a pod missing from it gets no status.podIP(s), as before
    IP assignment. ``labels`` replaces the initial ``{"pod": <name>}``.
    """
    ns, name = split_pod(pod)
    spec: dict[str, Any] = {
        "containers": [c.spec(image) for c in containers(ports, protocols)],
        "terminationGracePeriodSeconds": 0,
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    status: dict[str, Any] = {"phase": "Running"}
    ips = list((pod_ips or {}).get(pod, ()))
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": dict(labels) if labels is not None else pod_labels(pod),
        },
        "spec": spec,
        "status": status,
    }


def service_name(pod: str) -> str:
    ns, name = split_pod(pod)
    return f"s-{ns}-{name}"


def render_service(pod: str, *, ports: Sequence[int] = PORTS,
                   protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """The per-pod ClusterIP Service upstream creates (model.go Service) and
    probes (probe.go: addrTo = the destination pod's Service ClusterIP)."""
    ns, name = split_pod(pod)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(pod), "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "selector": {POD_LABEL_KEY: name},
            "ports": [
                {"name": f"service-port-{c.protocol.lower()}-{c.port}", "protocol": c.protocol,
                 "port": c.port, "targetPort": c.port}
                for c in containers(ports, protocols)
            ],
        },
    }
