"""deploy/kubernetes: every object valid offline (kubernetes-validate --strict for built-in kinds, our strict
schemas in tests/data/crd-schemas for the Prometheus Operator's), the PrometheusRule equal to alerts.yml, the
promises the README makes about the manifests, and the ConfigMap's resolver.yaml served through a directory laid
out the way kubelet lays out a ConfigMap or Secret volume, reloading when kubelet would swap it.

``python -m tests.integration.test_kubernetes`` writes deploy/kubernetes/prometheusrule.yaml from alerts.yml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.authserver import AuthServer
from tests.support.phones import dot_query, make_certs, tool
from tests.support.resolverproc import REPO_ROOT, ResolverFactory, addresses, free_port

KUBE = REPO_ROOT / "deploy" / "kubernetes"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
CRD_SCHEMAS = REPO_ROOT / "tests" / "data" / "crd-schemas"
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]  # the oldest maintained, the newest
KUBECTL = shutil.which("kubectl")


# ------------------------------------------------------------------------------------------------ the objects


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule deploy/kubernetes ships: alerts.yml's groups, unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "resolver", "labels": {"app.kubernetes.io/name": "resolver"}},
        "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]},
    }


def _literal(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def write_prometheus_rule() -> None:
    yaml.SafeDumper.add_representer(str, _literal)
    body = yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120, allow_unicode=True)
    (KUBE / "prometheusrule.yaml").write_text(
        "# Generated from deploy/prometheus/alerts.yml by `python -m tests.integration.test_kubernetes`; a test\n"
        "# fails when the two differ. Edit alerts.yml, then regenerate.\n" + body)


def kustomization(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return data


def objects_of(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization lists, read without kustomize (the ConfigMap as its generator would make it)."""
    spec = kustomization(directory)
    out: list[dict[str, Any]] = []
    for name in spec.get("resources", []):
        out += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    for generator in spec.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for obj in out:
        obj.setdefault("metadata", {}).setdefault("namespace", spec.get("namespace"))
    return out


def rendered(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would apply."""
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def validate(obj: dict[str, Any], version: str) -> None:
    """Strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` makes it."""
    group = obj["apiVersion"].split("/")[0]
    if group == "monitoring.coreos.com":
        schema = json.loads((CRD_SCHEMAS / f"{obj['kind'].lower()}_{obj['apiVersion'].split('/')[1]}.json")
                            .read_text())
        # Not jsonschema.validate: that checks the schema's own regexes first, and Go's mid-pattern ``(?i)`` (in
        # fields we do not set) is not Python's. Our values are checked all the same.
        jsonschema.Draft7Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl missing (for `kubectl kustomize`)")


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid(version: str) -> None:
    objects = objects_of(KUBE)
    assert {o["kind"] for o in objects} == {"Namespace", "Deployment", "Service", "PodDisruptionBudget",
                                            "NetworkPolicy", "PodMonitor", "PrometheusRule", "ConfigMap"}
    for obj in objects:
        validate(obj, version)


@needs_kubectl
@pytest.mark.parametrize("overlay", [KUBE, REPO_ROOT / "deploy" / "rollout" / "staging"], ids=["base", "staging"])
def test_what_kustomize_renders_is_valid(overlay: Path) -> None:
    objects = rendered(overlay)
    for obj in objects:
        validate(obj, KUBERNETES_VERSIONS[-1])
    namespace = kustomization(overlay)["namespace"]
    assert {o["metadata"].get("namespace", namespace) for o in objects if o["kind"] != "Namespace"} == {namespace}
    config = the(objects, "ConfigMap")
    assert config["metadata"]["name"] == "resolver-policy"  # no hash suffix: updated in place, so replicas reload
    assert set(config["data"]) == {"resolver.yaml", "force-blocklist.txt"}


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRootFilesytem"), True),
    (("spec", "replicas"), "three"),
])
def test_the_validator_catches_mistakes(path: tuple[str | int, ...], value: object) -> None:
    """A control: a misspelt field or a wrong type fails, so a passing validation means something."""
    deployment = the(objects_of(KUBE), "Deployment")
    node: Any = deployment
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, KUBERNETES_VERSIONS[-1])


def test_the_crd_schemas_catch_mistakes() -> None:
    monitor = the(objects_of(KUBE), "PodMonitor")
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, KUBERNETES_VERSIONS[-1])


def test_the_prometheus_rule_is_alerts_yml() -> None:
    shipped = the(objects_of(KUBE), "PrometheusRule")
    assert shipped["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], \
        "deploy/kubernetes/prometheusrule.yaml differs from alerts.yml: python -m tests.integration.test_kubernetes"
    assert {k: v for k, v in shipped.items() if k != "metadata"} == \
        {k: v for k, v in prometheus_rule().items() if k != "metadata"}


# ------------------------------------------------------------------------------------------------ what it promises


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBE / "resolver.yaml").read_text())
    return data


def test_three_replicas_on_three_nodes_and_a_budget() -> None:
    objects = objects_of(KUBE)
    spec = the(objects, "Deployment")["spec"]
    assert spec["replicas"] == 3
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [term["topologyKey"] for term in anti] == ["kubernetes.io/hostname"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}  # no fourth node needed
    assert the(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_locked_down_container_with_probes_and_cpu_limit() -> None:
    objects = objects_of(KUBE)
    container = _container(objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["cpu"]
    assert not any(a.startswith("--workers") for a in container["args"])  # the count follows the CPU limit


def test_service_ports_reach_the_listeners_and_keep_phone_addresses() -> None:
    objects = objects_of(KUBE)
    service = the(objects, "Service")["spec"]
    assert service["externalTrafficPolicy"] == "Local"
    ports = {p["name"]: p for p in _container(objects)["ports"]}
    published = {(p["port"], p["protocol"]): ports[p["targetPort"]] for p in service["ports"]}
    assert set(published) == {(53, "UDP"), (53, "TCP"), (853, "TCP"), (443, "TCP")}
    for (_, protocol), target in published.items():
        assert target["protocol"] == protocol
    args = _container(objects)["args"]
    listen = {int(a.rsplit(":", 1)[1]) for a in _config()["listen"]}
    assert listen == {published[(53, "UDP")]["containerPort"], published[(53, "TCP")]["containerPort"]}
    assert {int(args[i + 1].rsplit(":", 1)[1]) for i, a in enumerate(args) if a == "--dot"} == \
        {published[(853, "TCP")]["containerPort"]}
    assert {int(args[i + 1].rsplit(":", 1)[1]) for i, a in enumerate(args) if a == "--doh"} == \
        {published[(443, "TCP")]["containerPort"]}
    assert int(_config()["metrics"].rsplit(":", 1)[1]) == ports["metrics"]["containerPort"]


def test_network_policy_admits_the_vpn_pools_and_monitoring_only() -> None:
    objects = objects_of(KUBE)
    ingress = the(objects, "NetworkPolicy")["spec"]["ingress"]
    dns, metrics = ingress
    docker = yaml.safe_load((REPO_ROOT / "deploy" / "docker.yaml").read_text())
    pools = [n for n in docker["access"]["allow"] if not n.startswith(("127.", "::1"))]
    assert [b["ipBlock"]["cidr"] for b in dns["from"]] == pools == ["10.20.0.0/16", "fd00:20::/32"]
    assert _config()["access"]["allow"] == docker["access"]["allow"]
    container_ports = {(p["containerPort"], p["protocol"]) for p in _container(objects)["ports"]}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == container_ports - {(9153, "TCP")}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9153}]


def test_the_pod_monitor_scrapes_as_job_resolver() -> None:
    objects = objects_of(KUBE)
    monitor = the(objects, "PodMonitor")["spec"]
    labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels[monitor["jobLabel"]] == "resolver"  # alerts.yml's up{job="resolver"}
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]


# ------------------------------------------------------------------------------------------------ kubelet's volume


class KubeletVolume:
    """A ConfigMap or Secret volume as kubelet's atomic writer makes it: the files in a timestamped directory,
    ``..data`` a symlink to it, each file a symlink through ``..data``. An update writes a new directory, swaps
    ``..data`` with a rename (atomic) and removes the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.current: Path | None = None
        self.serial = 0

    def publish(self, files: dict[str, bytes]) -> None:
        self.serial += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        directory = self.root / f"..{stamp}.{self.serial:09d}"
        directory.mkdir()
        for name, content in files.items():
            (directory / name).write_bytes(content)
        (self.root / "..data_tmp").symlink_to(directory.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        if self.current is not None:
            shutil.rmtree(self.current)
        self.current = directory


def _deployment_flags(certs: Path, dot: int, doh: int) -> list[str]:
    """The Deployment's flags, with its addresses on loopback and its Secret's mount at ``certs``."""
    args = _container(objects_of(KUBE))["args"]
    out: list[str] = []
    for i, arg in enumerate(args):
        if (i and args[i - 1] in ("--dot", "--doh", "-c")) or arg in ("--dot", "--doh", "-c", "serve"):
            continue
        out.append(arg.replace("/etc/resolver-tls", str(certs)))
    return [*out, "--dot", f"127.0.0.1:{dot}", "--doh", f"127.0.0.1:{doh}"]


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[tuple[KubeletVolume, KubeletVolume]]:
    yield KubeletVolume(tmp_path / "etc-resolver"), KubeletVolume(tmp_path / "etc-resolver-tls")


@pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")
def test_the_configmap_serves_and_reloads_when_kubelet_swaps_it(
        resolver_factory: ResolverFactory, auth: AuthServer, tmp_path: Path,
        volumes: tuple[KubeletVolume, KubeletVolume]) -> None:
    config, secret = volumes
    files = {name: (KUBE / name).read_bytes() for name in kustomization(KUBE)["configMapGenerator"][0]["files"]}
    config.publish(files)
    ca, cert, key = make_certs(tmp_path / "pki-1", tag="first")
    secret.publish({"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()})
    auth.add("www.example.test", "A", "192.0.2.10")
    auth.add("newly.banned.test", "A", "192.0.2.11")
    dot, doh = free_port(udp=False), free_port(udp=False)
    server = resolver_factory(None, ["-c", str(config.root / "resolver.yaml"), *_deployment_flags(secret.root, dot,
                                                                                                    doh)],
                              metrics=True)
    assert addresses(server.query("www.tiktok.com"), "A") == ["0.0.0.0"]
    assert addresses(server.query("blocked.force.example"), "A") == ["0.0.0.0"]  # the ConfigMap's own list
    assert addresses(server.query("www.example.test"), "A") == ["192.0.2.10"]
    assert addresses(dot_query(dot, "www.tiktok.com", ca), "A") == ["0.0.0.0"]
    assert addresses(server.query("newly.banned.test"), "A") == ["192.0.2.11"]

    # The ConfigMap changes (a name added to the force's list): kubelet swaps ..data, the replica reloads.
    files["force-blocklist.txt"] += b"newly.banned.test\n"
    config.publish(files)
    assert server.wait_stderr("policy reloaded", timeout=20), server.stderr_text()
    assert addresses(server.query("newly.banned.test"), "A") == ["0.0.0.0"]
    assert "reload refused" not in server.stderr_text()

    # The Secret is renewed (a certificate from another CA): the next DoT connection gets it.
    ca2, cert2, key2 = make_certs(tmp_path / "pki-2", tag="second")
    secret.publish({"tls.crt": cert2.read_bytes(), "tls.key": key2.read_bytes()})
    assert server.wait_stderr("tls certificate reloaded", timeout=20), server.stderr_text()
    assert addresses(dot_query(dot, "www.tiktok.com", ca2), "A") == ["0.0.0.0"]
    assert server.alive()


def test_a_swap_to_a_file_with_the_same_size_and_time_is_still_a_change(tmp_path: Path) -> None:
    """kubelet writes fresh files, but a copy that kept its time (cp -p, rsync -t) and size differs only in being
    another file: the watcher compares inodes too."""
    from resolver.config.loader import load_config
    from resolver.core.cache import Cache
    from resolver.core.pipeline import Pipeline
    from resolver.core.stats import Stats
    from resolver.lists.load import load_policy
    from resolver.ops.reload import Reloader, changed_files

    volume = KubeletVolume(tmp_path / "etc-resolver")
    volume.publish({"resolver.yaml": b"policy: {block: [social]}\n"})
    first = volume.root.joinpath("resolver.yaml").stat()
    config = load_config(volume.root / "resolver.yaml")
    loaded = load_policy(config)
    pipeline = Pipeline(loaded.policy, Cache(config.cache), Stats(), time.monotonic, time.time)
    reloader = Reloader(lambda: config, config, pipeline, loaded)
    seen = reloader.watched()
    volume.publish({"resolver.yaml": b"policy: {block: [social]}\n"})
    os.utime(volume.root / "resolver.yaml", ns=(first.st_atime_ns, first.st_mtime_ns))
    assert changed_files(seen, reloader.watched()) == [str(volume.root / "resolver.yaml")]


if __name__ == "__main__":
    write_prometheus_rule()
    sys.exit(0)
