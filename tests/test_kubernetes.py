"""The Kubernetes manifests in deploy/kubernetes: valid API objects, and a stop budget that fits.

1. Schema: every object is validated against the Kubernetes OpenAPI schemas bundled with
   ``kubernetes-validate`` (offline), in strict mode so a misspelled field is an error here
   rather than whatever the client's field validation makes of it at apply time.
2. Consistency: the rules no schema knows. graceful's stop timeout must fit inside the pod's
   grace period (minus any preStop time), the propagation delay must leave time to drain,
   probes must hit the admin port, and the pod must run unprivileged as a non-root user.
3. The Services and PodDisruptionBudgets select exactly their workload's pods.
4. On a real Docker engine: the image runs under the pod spec's container settings and stops
   within the grace period the manifest gives it.

Checks 1 and 2 are also fed broken copies of the manifests, so they are shown to fail.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from graceful.budget import Budget
from graceful.config import Config

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Kubernetes versions to validate against: the oldest where every field used here is on by
# default (unhealthyPodEvictionPolicy is beta and on since 1.27), and the newest bundled.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# The container that runs graceful in each workload.
APP = "app"

Resource = dict[str, Any]


def load(path: Path) -> list[Resource]:
    """Every non-empty YAML document in ``path``."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def resources() -> list[tuple[str, Resource]]:
    """(file name, object) for every Kubernetes object in the manifest directory."""
    return [
        (path.name, doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in load(path)
        if doc.get("kind") != "Kustomization"
    ]


def workloads() -> list[Resource]:
    return [doc for _, doc in resources() if doc["kind"] in WORKLOAD_KINDS]


def workload(kind: str) -> Resource:
    (found,) = [doc for doc in workloads() if doc["kind"] == kind]
    return found


def app_container(resource: Resource) -> dict[str, Any]:
    containers: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == APP]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values (valueFrom entries cannot be checked offline and are skipped)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def port_number(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's named port against the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise LookupError(f"container {container['name']!r} has no port named {port!r}")


def prestop_seconds(container: dict[str, Any]) -> float:
    """Seconds a preStop hook takes out of the grace period before SIGTERM is sent."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    # An exec or httpGet hook takes an unknown time: its length cannot be checked statically.
    raise ValueError(f"container {container['name']!r}: only a preStop sleep can be budgeted")


def budget_problems(resource: Resource) -> list[str]:
    """What is wrong with a workload's stop budget, probes and security settings."""
    name = f"{resource['kind']}/{resource['metadata']['name']}"
    pod = resource["spec"]["template"]["spec"]
    container = app_container(resource)
    env = env_of(container)
    problems: list[str] = []

    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    try:
        config = Config.from_env(env)
    except ValueError as exc:
        return [f"{name}: graceful rejects the env: {exc}"]
    if "GRACEFUL_STOP_TIMEOUT" not in env:
        problems.append(f"{name}: GRACEFUL_STOP_TIMEOUT is not set (graceful would assume 10 s)")
    try:
        available = grace - prestop_seconds(container)
    except ValueError as exc:
        problems.append(f"{name}: {exc}")
        available = grace
    if config.stop_timeout > available:
        problems.append(
            f"{name}: GRACEFUL_STOP_TIMEOUT={config.stop_timeout:g} exceeds "
            f"terminationGracePeriodSeconds={grace:g} minus preStop time: SIGKILL comes first"
        )
    if config.delay + config.effective_margin >= config.stop_timeout:
        problems.append(
            f"{name}: GRACEFUL_DELAY={config.delay:g} + margin={config.effective_margin:g} "
            f"leaves nothing of GRACEFUL_STOP_TIMEOUT={config.stop_timeout:g}"
        )
    problems.extend(f"{name}: {w}" for w in config.fit_warnings())

    admin_port = config.admin_port
    if admin_port is None:
        problems.append(f"{name}: ADMIN_PORT is not set, so nothing serves /readyz")
    if config.admin_host in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"{name}: ADMIN_HOST={config.admin_host} is unreachable for the kubelet")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{name}: no {probe} with httpGet")
            continue
        if get.get("path") != path:
            problems.append(f"{name}: {probe} asks {get.get('path')!r}, not {path!r}")
        try:
            if port_number(container, get["port"]) != admin_port:
                problems.append(f"{name}: {probe} is not on the admin port {admin_port}")
        except LookupError as exc:
            problems.append(f"{name}: {probe}: {exc}")

    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})

    def effective(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    if effective("runAsNonRoot") is not True:
        problems.append(f"{name}: runAsNonRoot is not true")
    if effective("runAsUser") in (None, 0):
        problems.append(f"{name}: runAsUser is unset or 0")
    if sc.get("privileged", False):
        problems.append(f"{name}: the container is privileged")
    if sc.get("allowPrivilegeEscalation", True):
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: the root file system is writable")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append(f"{name}: capabilities are not all dropped")
    if sc.get("capabilities", {}).get("add"):
        problems.append(f"{name}: capabilities are added back")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: no RuntimeDefault seccomp profile")
    state_dir = str(Path(env.get("STATE_PATH", "/data/state.sqlite")).parent)
    if state_dir not in {m["mountPath"] for m in container.get("volumeMounts", [])}:
        problems.append(f"{name}: {state_dir} (STATE_PATH's directory) has no writable volume")
    return problems


# -- 1. schema ------------------------------------------------------------------------------


def resource_ids() -> Iterator[str]:
    for file, doc in resources():
        yield f"{file}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("file", "resource"), resources(), ids=list(resource_ids()))
def test_manifest_is_a_valid_kubernetes_object(file: str, resource: Resource, version: str) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


BREAKAGES: dict[str, Callable[[Resource], None]] = {
    # Non-strict schemas accept unknown fields; a typo here would silently do nothing.
    "misspelled field": lambda d: d["spec"]["template"]["spec"].update(
        terminationGracePeriodSecond=30
    ),
    "env value not a string": lambda d: app_container(d)["env"][0].update(value=8080),
    "container without a name": lambda d: app_container(d).pop("name"),
    "maxSurge neither a number nor a percentage": lambda d: d["spec"]["strategy"][
        "rollingUpdate"
    ].update(maxSurge=[1]),
    "replicas not an integer": lambda d: d["spec"].update(replicas="three"),
    "probe port not a port": lambda d: app_container(d)["readinessProbe"]["httpGet"].update(
        port={"name": "admin"}
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_validator_rejects_a_broken_manifest(breakage: str) -> None:
    broken = copy.deepcopy(workload("Deployment"))
    BREAKAGES[breakage](broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_the_deployment_variant() -> None:
    (kustomization,) = load(MANIFESTS / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert all((MANIFESTS / f).is_file() for f in listed)
    # statefulset.yaml is the alternative variant: applying both would run two services.
    assert listed == {"deployment.yaml", "service.yaml", "pdb.yaml"}


# -- 2. consistency -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_workload_stop_budget_probes_and_security_are_consistent(kind: str) -> None:
    assert budget_problems(workload(kind)) == []


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_drain_keeps_most_of_the_budget(kind: str) -> None:
    config = Config.from_env(env_of(app_container(workload(kind))))
    plan = Budget.plan(config, start=0.0)
    # The delay and the reserved tail must not eat the drain: with grace 30 and delay 5 the
    # drain window is 21 s, longer than any request the example serves.
    assert plan.delay_end == config.delay
    assert plan.drain_end - plan.delay_end >= config.stop_timeout / 2


def _set_env(name: str, value: str) -> Callable[[Resource], None]:
    def mutate(d: Resource) -> None:
        for e in app_container(d)["env"]:
            if e["name"] == name:
                e["value"] = value
                return
        app_container(d)["env"].append({"name": name, "value": value})

    return mutate


def _prestop_sleep(seconds: int) -> Callable[[Resource], None]:
    def mutate(d: Resource) -> None:
        app_container(d)["lifecycle"] = {"preStop": {"sleep": {"seconds": seconds}}}

    return mutate


def _as_root(d: Resource) -> None:
    d["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    app_container(d)["securityContext"].update(runAsNonRoot=False, runAsUser=0)


INCONSISTENCIES: dict[str, tuple[Callable[[Resource], None], str]] = {
    "stop timeout above grace": (_set_env("GRACEFUL_STOP_TIMEOUT", "45"), "SIGKILL comes first"),
    "preStop eats the grace": (_prestop_sleep(5), "minus preStop"),
    "unbudgetable preStop": (
        lambda d: app_container(d).update(
            lifecycle={"preStop": {"exec": {"command": ["sleep", "5"]}}}
        ),
        "only a preStop sleep",
    ),
    "delay eats the budget": (_set_env("GRACEFUL_DELAY", "29.5"), "leaves nothing"),
    "delay leaves no drain": (_set_env("GRACEFUL_DELAY", "27"), "no time to drain"),
    "stop timeout missing": (
        lambda d: app_container(d).update(
            env=[e for e in app_container(d)["env"] if e["name"] != "GRACEFUL_STOP_TIMEOUT"]
        ),
        "is not set",
    ),
    "bad env value": (_set_env("GRACEFUL_DELAY", "soon"), "graceful rejects the env"),
    "admin on loopback": (_set_env("ADMIN_HOST", "127.0.0.1"), "unreachable for the kubelet"),
    "readiness on the http port": (
        lambda d: app_container(d)["readinessProbe"]["httpGet"].update(port="http"),
        "readinessProbe is not on the admin port",
    ),
    "readiness asks /livez": (
        lambda d: app_container(d)["readinessProbe"]["httpGet"].update(path="/livez"),
        "not '/readyz'",
    ),
    "probe port name unknown": (
        lambda d: app_container(d)["livenessProbe"]["httpGet"].update(port="metrics"),
        "no port named 'metrics'",
    ),
    "runs as root": (_as_root, "runAsNonRoot is not true"),
    "privileged": (
        lambda d: app_container(d)["securityContext"].update(privileged=True),
        "is privileged",
    ),
    "privilege escalation": (
        lambda d: app_container(d)["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation",
    ),
    "capability added": (
        lambda d: app_container(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "added back",
    ),
    "writable root": (
        lambda d: app_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "root file system is writable",
    ),
    "state dir not mounted": (_set_env("STATE_PATH", "/var/lib/app/state.sqlite"), "/var/lib/app"),
}


@pytest.mark.parametrize("case", INCONSISTENCIES)
def test_consistency_check_catches(case: str) -> None:
    mutate, expected = INCONSISTENCIES[case]
    broken = copy.deepcopy(workload("Deployment"))
    mutate(broken)
    problems = budget_problems(broken)
    assert any(expected in p for p in problems), problems


def test_prestop_sleep_fits_when_the_stop_timeout_is_reduced() -> None:
    """The sidecar/mesh variant of docs/kubernetes.md: preStop sleep 5, GRACEFUL_DELAY 0."""
    variant = copy.deepcopy(workload("Deployment"))
    _prestop_sleep(5)(variant)
    _set_env("GRACEFUL_STOP_TIMEOUT", "25")(variant)
    _set_env("GRACEFUL_DELAY", "0")(variant)
    assert budget_problems(variant) == []
    kubernetes_validate.validate(variant, "1.34", strict=True)


# -- 3. the objects select each other -------------------------------------------------------


def test_services_and_budgets_select_their_workload_pods() -> None:
    pods = {
        w["metadata"]["name"]: (w["spec"]["template"]["metadata"]["labels"], app_container(w))
        for w in workloads()
    }
    checked = 0
    for _, doc in resources():
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [
            (name, container)
            for name, (labels, container) in pods.items()
            if selector.items() <= labels.items()
        ]
        assert len(matched) == 1, f"{doc['kind']}/{doc['metadata']['name']} selects {matched}"
        if doc["kind"] == "Service":
            _, container = matched[0]
            for port in doc["spec"]["ports"]:
                port_number(container, port["targetPort"])
        checked += 1
    assert checked == 4


def test_deployment_rolls_without_losing_capacity() -> None:
    deployment = workload("Deployment")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling == {"maxUnavailable": 0, "maxSurge": 1}
    # A single replica with maxUnavailable 0 is fine for a roll, but a PDB of one would
    # block every node drain.
    assert deployment["spec"]["replicas"] >= 2


# -- 4. the pod spec, run for real --------------------------------------------------------
#
# No cluster here, but the container part of a pod spec maps onto `docker run`: same image,
# env, user, read-only root, dropped capabilities, no-new-privileges, writable volumes (as
# tmpfs) and limits. This proves the image really runs under the manifest's security settings
# and that its stop follows the budget the manifest sets.

NO_ENGINE = "no Docker engine answers: run `bash docker/engine.sh` or point DOCKER_HOST at one"
# Hang guards only.
START_TIMEOUT_S = 30.0


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def quantity(value: str) -> float:
    """A Kubernetes resource quantity ("100m", "1", "256Mi") as a plain number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in suffixes.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def docker_run_options(resource: Resource) -> dict[str, Any]:
    """What a kubelet would ask of the container runtime for the app container, as docker SDK
    ``containers.run`` keywords (ports published on 127.0.0.1 only)."""
    pod = resource["spec"]["template"]["spec"]
    container = app_container(resource)
    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
    fs_group = pod_sc.get("fsGroup", gid)
    limits = container.get("resources", {}).get("limits", {})
    return {
        "image": container["image"],
        "environment": env_of(container),
        "user": f"{uid}:{gid}",
        "group_add": [str(fs_group)],
        "read_only": sc.get("readOnlyRootFilesystem", False),
        "cap_drop": sc.get("capabilities", {}).get("drop", []),
        "security_opt": [] if sc.get("allowPrivilegeEscalation", True) else ["no-new-privileges"],
        # emptyDir and PVC volumes become tmpfs owned by the pod's fsGroup, as fsGroup would.
        "tmpfs": {
            m["mountPath"]: f"size=64m,mode=0770,uid={uid},gid={fs_group}"
            for m in container.get("volumeMounts", [])
        },
        "mem_limit": int(quantity(limits["memory"])),
        "nano_cpus": int(quantity(limits["cpu"]) * 1e9),
        "ports": {
            f"{p['containerPort']}/tcp": ("127.0.0.1", None) for p in container.get("ports", [])
        },
    }


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        _skip_or_fail(f"{NO_ENGINE} ({exc})")
    yield client
    client.close()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.TransportError:
        return 0


def _wait_status(url: str, status: int, container: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while _get(url) != status:
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            raise AssertionError(f"{url} never answered {status}; logs:\n{logs}")
        time.sleep(0.1)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_pod_spec_runs_and_stops_within_its_grace_period(docker_client: Any, kind: str) -> None:
    """The manifest's container settings, under a real engine.

    1. Start the image with the pod's env, user, read-only root, no capabilities, tmpfs volumes.
    2. /readyz answers 200 on the admin port (so the readiness probe would pass).
    3. SIGTERM, as the kubelet sends it. With a propagation delay: /readyz turns 503 while
       /livez stays 200 and the HTTP port still answers.
    4. The process exits 0 on its own, and its shutdown report fits the grace period.

    Result: the image honours the pod spec and the budget the manifest sets.
    """
    resource = workload(kind)
    options = docker_run_options(resource)
    try:
        docker_client.images.get(options["image"])
    except Exception:
        _skip_or_fail(f"{options['image']} is not built: run `bash docker/build.sh`")
    pod = resource["spec"]["template"]["spec"]
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    config = Config.from_env(options["environment"])
    container = docker_client.containers.run(
        detach=True, network_mode="bridge", labels={"graceful": "test"}, **options
    )
    try:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"]
        admin = f"http://127.0.0.1:{ports[f'{config.admin_port}/tcp'][0]['HostPort']}"
        _wait_status(f"{admin}/readyz", 200, container)
        assert _get(f"{admin}/livez") == 200

        container.kill(signal="SIGTERM")
        if config.delay > 0:
            # Inside the delay (seconds long): unready, alive, and serving the requests that
            # load balancers keep sending until the endpoint removal reaches them. Without a
            # delay the stop can be over before anything could be observed.
            _wait_status(f"{admin}/readyz", 503, container)
            assert _get(f"{admin}/livez") == 200
            app = f"http://127.0.0.1:{ports['8080/tcp'][0]['HostPort']}"
            assert _get(f"{app}/work?ms=1") == 200

        result = container.wait(timeout=grace + 10)
        logs = container.logs().decode(errors="replace")
        assert result["StatusCode"] == 0, logs
        (report,) = [
            json.loads(line)
            for line in logs.splitlines()
            if line.startswith("{") and '"shutdown.report"' in line
        ]
        assert report["exit_code"] == 0
        assert report["stop_timeout"] == config.stop_timeout
        assert report["seconds"] < grace
        assert not report["overran"]
        if config.delay > 0:
            assert report["phases"]["delay"] >= config.delay * 0.9, report
    finally:
        container.remove(force=True, v=True)
