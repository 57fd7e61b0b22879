"""The Helm chart (docker/helm/sdtriton) renders, lints and validates offline, and deploys what the server needs.

No cluster: Helm runs as a library (``helm_python``: render, lint, values.schema.json), every rendered object is
validated with Kubernetes' own strict OpenAPI schemas (``kubernetes_validate``) for the oldest and the newest
Kubernetes the chart supports, where an unknown kind or a removed API fails instead of warning, and the custom
resources (Prometheus Operator, KEDA, KServe) against the JSON schemas in docker/helm/crd-schemas/. What this cannot
show (scheduling on GPUs, the metric path through Prometheus, real scaling) is listed in docker/helm/README.md.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError, all_versions, major_minor

from sdtriton import server
from sdtriton.cli import parse_arguments
from sdtriton.gateway.access import parse_api_keys
from sdtriton.gateway.settings import MIN_JOB_LEASE_S, WEBHOOK_SECRET_ENVIRONMENT, check_exposure, load_settings
from sdtriton.serving.metrics import ENGINE_METRICS, REQUESTS_RUNNING, REQUESTS_WAITING
from tests.unit.gateway_series import gateway_exposition
from tests.unit.promql import metric_names, recorded_series

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "docker" / "helm"
CHART_DIR = HELM_DIR / "sdtriton"
VALUES_DIR = HELM_DIR / "values"
INVALID_DIR = VALUES_DIR / "invalid"
CRD_SCHEMA_DIR = HELM_DIR / "crd-schemas"
KSERVE_EXAMPLE = ROOT / "docker" / "kserve" / "inferenceservice.yaml"
RULES = ROOT / "monitoring" / "prometheus_rules.yaml"
CHART_RULES = CHART_DIR / "files" / "prometheus_rules.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
README = HELM_DIR / "README.md"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
# Where the chart mounts a pvc or nfs deploy folder (SDTRITON_DEPLOY_DIR).
DEPLOY_MOUNT = "/deploy"

# The Kubernetes versions every object is validated against; Chart.yaml's kubeVersion starts at the oldest.
OLDEST_KUBE = "1.27"
NEWEST_KUBE = "1.37"
KUBE_VERSIONS = (OLDEST_KUBE, NEWEST_KUBE)
RELEASE = "sd"
NAMESPACE = "serving"
# The least the defaults need: the GPU the plans were built for, where the repository is, and the gateway's API keys.
MINIMAL_VALUES = {
    "gpu": {"product": "NVIDIA-L4"},
    "modelRepository": {"pvc": {"claimName": "sdtriton-deploy"}},
    "gateway": {"apiKeys": {"existingSecret": "sdtriton-gateway-api-keys"}},
}
EXPECT_PREFIX = "# expect: "
# Custom resources: (apiVersion, kind) -> their schema under docker/helm/crd-schemas/.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving.kserve.io-v1beta1.json",
}
# Triton's own metric the autoscaling queries may read: the entry model's queue, for pods without our gauges.
TRITON_METRICS = {"nv_inference_pending_request_count"}
# The rules' alerts on the HPA read kube-state-metrics' series (tests/unit/test_monitoring_rules.py lists them).
KUBE_STATE_PREFIX = "kube_horizontalpodautoscaler_"
OUR_SERIES = {name for spec in ENGINE_METRICS for name in spec.series_names}
PORTS = {"http": server.DEFAULT_HTTP_PORT, "grpc": server.DEFAULT_GRPC_PORT, "metrics": server.DEFAULT_METRICS_PORT}
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
# A scale-down window shorter than the HPA's own default would undo a burst's scale-up within minutes.
MIN_SCALE_DOWN_WINDOW_S = 300
# Fast scale-up: at least doubling within this long.
MAX_DOUBLING_PERIOD_S = 60
# The adapter's query placeholders, and what the HPA's request fills them with.
ADAPTER_PLACEHOLDERS = {"<<.LabelMatchers>>": 'namespace="serving",pod=~"sd-.*"', "<<.GroupBy>>": "pod"}
# Every object carries app.kubernetes.io/component: Triton's are `server`, the HTTP gateway's `gateway`.
COMPONENT = "app.kubernetes.io/component"
SERVER, GATEWAY = "server", "gateway"


class ManifestError(AssertionError):
    """An object Kubernetes (or the controller of its custom resource) would refuse."""


# --- rendering -------------------------------------------------------------------------------------------------


def _value_sets() -> dict[str, dict[str, Any]]:
    """Every value set under docker/helm/values/, and the defaults with the least they need."""
    sets = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(VALUES_DIR.glob("*.yaml"))}
    sets["defaults"] = MINIMAL_VALUES
    return sets


VALUE_SETS = _value_sets()


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


@functools.cache
def _values(set_name: str) -> dict[str, Any]:
    """What the release would use: the chart's defaults coalesced with the set."""
    return _chart().merge_values(VALUE_SETS[set_name])


@functools.cache
def _rendered(set_name: str) -> tuple[dict[str, Any], ...]:
    manifests = _chart().render(VALUE_SETS[set_name], name=RELEASE, namespace=NAMESPACE)
    return tuple(doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc)


def _component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"][COMPONENT]


def _objects(set_name: str, kind: str, component: str = SERVER) -> list[dict[str, Any]]:
    return [obj for obj in _rendered(set_name) if obj["kind"] == kind and _component(obj) == component]


def _one(set_name: str, kind: str, component: str = SERVER) -> dict[str, Any]:
    objects = _objects(set_name, kind, component)
    assert len(objects) == 1, f"{set_name}: {len(objects)} {component} {kind} objects, expected one"
    return objects[0]


def _pod(set_name: str) -> dict[str, Any]:
    return _one(set_name, "Deployment")["spec"]["template"]


def _container(set_name: str) -> dict[str, Any]:
    (container,) = _pod(set_name)["spec"]["containers"]
    return container


def _sets_where(predicate: Callable[[dict[str, Any]], bool]) -> list[str]:
    names = [name for name in VALUE_SETS if predicate(_values(name))]
    assert names, "no value set covers this case: add one under docker/helm/values/"
    return names


def _provider_is(provider: str) -> Callable[[dict[str, Any]], bool]:
    return lambda values: values["autoscaling"]["provider"] == provider


def _source_is(source: str) -> Callable[[dict[str, Any]], bool]:
    return lambda values: values["modelRepository"]["source"] == source


# --- validation ------------------------------------------------------------------------------------------------


@functools.cache
def _crd_validator(file_name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRD_SCHEMA_DIR / file_name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')} {obj.get('apiVersion')} {obj.get('metadata', {}).get('name')}"


def _kubernetes_validate(obj: dict[str, Any], kube_version: str) -> None:
    """Kubernetes' strict schema of ``kube_version`` exactly: an unknown kind or a removed API is an error."""
    shipped = {major_minor(version) for version in all_versions()}
    if kube_version not in shipped:
        raise ManifestError(f"kubernetes-validate has no schemas for Kubernetes {kube_version}")
    try:
        validated = kubernetes_validate.validate(obj, kube_version, strict=True)
    except SchemaNotFoundError as error:
        raise ManifestError(f"{_name(obj)}: no such kind in Kubernetes {kube_version} (unknown or removed)") from error
    except VersionNotSupportedError as error:
        raise ManifestError(f"{_name(obj)}: {error.message}") from error
    except kubernetes_validate.ValidationError as error:
        path = ".".join(map(str, error.path))
        raise ManifestError(f"{_name(obj)} at Kubernetes {kube_version}: {path}: {error.message}") from error
    if validated != kube_version:
        raise ManifestError(f"{_name(obj)}: validated against Kubernetes {validated}, not {kube_version}")


def _embedded_objects(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Kubernetes objects a custom resource stands for, so that Kubernetes' own schemas check those parts."""
    spec = obj["spec"]
    if obj["kind"] == "ScaledObject":  # KEDA makes an autoscaling/v2 HPA with this behaviour
        hpa_spec = {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec.get("minReplicaCount", 1),
            "maxReplicas": spec.get("maxReplicaCount", 100),
            "behavior": spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {}),
        }
        yield {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"keda-hpa-{obj['metadata']['name']}"},
            "spec": hpa_spec,
        }
    if obj["kind"] == "InferenceService":  # the predictor is a PodSpec whose `model` is the serving container
        predictor = dict(spec["predictor"])
        model = predictor.pop("model")
        kserve_only = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout"}
        pod_spec = {key: value for key, value in predictor.items() if key not in kserve_only}
        container_fields = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri"}
        container = {key: value for key, value in model.items() if key not in container_fields}
        container.setdefault("image", f"nvcr.io/nvidia/tritonserver:{model.get('runtimeVersion', 'latest')}")
        pod_spec["containers"] = [{"name": "kserve-container", **container}]
        yield {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"]}, "spec": pod_spec}


def validate_manifest(obj: dict[str, Any], kube_version: str) -> None:
    """Raises :class:`ManifestError` unless ``obj`` is valid at ``kube_version``."""
    crd_schema = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd_schema is None:
        _kubernetes_validate(obj, kube_version)
        return
    errors = sorted(_crd_validator(crd_schema).iter_errors(obj), key=lambda error: list(map(str, error.path)))
    if errors:
        details = "; ".join(f"{'.'.join(map(str, error.path))}: {error.message}" for error in errors)
        raise ManifestError(f"{_name(obj)}: {details}")
    for embedded in _embedded_objects(obj):
        _kubernetes_validate(embedded, kube_version)


# --- PromQL ----------------------------------------------------------------------------------------------------


def _adapter_rules(set_name: str) -> list[dict[str, Any]]:
    config_maps = [cm for cm in _objects(set_name, "ConfigMap") if cm["metadata"]["name"].endswith("adapter-rules")]
    assert len(config_maps) == 1, f"{set_name}: expected one prometheus-adapter rules ConfigMap"
    return yaml.safe_load(config_maps[0]["data"]["config.yaml"])["rules"]


def _adapter_query(text: str) -> str:
    for placeholder, value in ADAPTER_PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text


def _scaling_queries(set_name: str) -> list[str]:
    """The PromQL the autoscaling of a value set runs: the adapter rules' or the ScaledObject's."""
    provider = _values(set_name)["autoscaling"]["provider"]
    if provider == "prometheus-adapter":
        return [_adapter_query(r[key]) for r in _adapter_rules(set_name) for key in ("seriesQuery", "metricsQuery")]
    if provider == "keda":
        triggers = _one(set_name, "ScaledObject")["spec"]["triggers"]
        return [trigger["metadata"]["query"] for trigger in triggers if trigger["type"] == "prometheus"]
    return []


# --- the chart itself ------------------------------------------------------------------------------------------


def test_chart_metadata_and_supported_kubernetes():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert not chart.get("dependencies"), "the chart has no subcharts"
    assert not (CHART_DIR / "charts").exists()
    assert chart["kubeVersion"] == f">={OLDEST_KUBE}.0-0"
    shipped = [major_minor(version) for version in all_versions()]
    assert OLDEST_KUBE in shipped
    assert major_minor(kubernetes_validate.latest_version()) == NEWEST_KUBE, "validate against the newest shipped"
    assert _chart().metadata["name"] == "sdtriton"


def test_defaults_alone_are_refused_naming_what_is_missing():
    with pytest.raises(helm.HelmValuesError) as caught:
        _chart().render({}, name=RELEASE, namespace=NAMESPACE)
    message = str(caught.value)
    assert "at '/gpu/product': minLength: got 0, want 1" in message
    assert "at '/modelRepository/pvc/claimName': minLength: got 0, want 1" in message


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_value_set_lints_clean(set_name: str, kube_version: str):
    report = helm.lint(CHART_DIR, VALUE_SETS[set_name], strict=True, kube_version=f"v{kube_version}.0")
    assert not report["errors"], report["errors"]
    # Severity 1 is information (e.g. "icon is recommended"); 2 (warning) and 3 (error) fail.
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not problems, problems


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid(set_name: str, kube_version: str):
    objects = _rendered(set_name)
    assert {"Deployment", "Service"} <= {obj["kind"] for obj in objects}
    assert {_component(obj) for obj in objects} <= {SERVER, GATEWAY}
    for obj in objects:
        validate_manifest(obj, kube_version)


def test_the_validator_refuses_removed_apis_unknown_kinds_and_unknown_fields():
    hpa = {
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "old"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}, "maxReplicas": 2},
    }
    validate_manifest(hpa, "1.25")  # served through 1.25 (removed in 1.26): the same object passed there
    with pytest.raises(ManifestError, match="unknown or removed"):
        validate_manifest(hpa, OLDEST_KUBE)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    for version in KUBE_VERSIONS:
        with pytest.raises(ManifestError, match="unknown or removed"):
            validate_manifest(widget, version)
    deployment = json.loads(json.dumps(_one("defaults", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(ManifestError, match="livenessProb"):
        validate_manifest(deployment, NEWEST_KUBE)
    with pytest.raises(ManifestError, match="no schemas"):
        validate_manifest(_one("defaults", "Service"), "1.24")
    scaled = json.loads(json.dumps(_one(_sets_where(_provider_is("keda"))[0], "ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # KEDA's metadata values are strings
    with pytest.raises(ManifestError, match="threshold"):
        validate_manifest(scaled, NEWEST_KUBE)
    scaled = json.loads(json.dumps(_one(_sets_where(_provider_is("keda"))[0], "ScaledObject")))
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleUp"]["stabilisationWindowSeconds"] = 0  # only Kubernetes' own HPA schema knows the behaviour
    with pytest.raises(ManifestError, match="stabilisationWindowSeconds"):
        validate_manifest(scaled, NEWEST_KUBE)


def _invalid_value_files() -> list[Path]:
    return sorted(INVALID_DIR.glob("*.yaml"))


def test_there_are_invalid_value_files_with_expectations():
    files = _invalid_value_files()
    assert len(files) >= 5
    for path in files:
        assert path.read_text().startswith(EXPECT_PREFIX), f"{path.name}: the first line must be '{EXPECT_PREFIX}...'"


@pytest.mark.parametrize("path", _invalid_value_files(), ids=lambda path: path.stem)
def test_invalid_values_are_refused_with_their_message(path: Path):
    expected = path.read_text().splitlines()[0].removeprefix(EXPECT_PREFIX).strip()
    assert expected
    with pytest.raises(helm.HelmError) as caught:
        _chart().render(yaml.safe_load(path.read_text()), name=RELEASE, namespace=NAMESPACE)
    assert expected in str(caught.value), f"{path.name}: {caught.value}"


# --- what a user would notice ----------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_ports_probes_and_startup_budget(set_name: str):
    container = _container(set_name)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == PORTS
    for probe, path in (("startupProbe", READY_PATH), ("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} checks {get['path']}"
        assert ports.get(get["port"], get["port"]) == server.DEFAULT_HTTP_PORT
    startup = container["startupProbe"]
    budget_s = _values(set_name)["server"]["startupBudgetSeconds"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget_s


def _entrypoint_serve_words() -> list[str]:
    """The `sdtriton serve` line of docker/entrypoint.sh, as shell words (``$repository``, ``$@`` left as they are)."""
    (line,) = [line for line in ENTRYPOINT.read_text().splitlines() if line.startswith("exec sdtriton serve ")]
    return shlex.split(line)[2:]


def _serve_words(set_name: str) -> list[str]:
    """The words `sdtriton` gets in the container: the chart's command, or entrypoint.sh's line with our args."""
    container = _container(set_name)
    if "command" in container:
        assert container["command"][:2] == ["sdtriton", "serve"]
        return container["command"][1:] + container["args"]
    words = []
    for word in _entrypoint_serve_words():
        if word == "$@":
            words += container["args"]
        else:
            words.append(word.replace("$repository", DEPLOY_MOUNT + "/repository"))
    return words


def _tritonserver_args(set_name: str) -> list[str]:
    words = _serve_words(set_name)
    assert words.count("--") == 1, words
    return words[words.index("--") + 1 :]


def _serve_option(set_name: str, option: str) -> str:
    words = _serve_words(set_name)
    before = words[: words.index("--")]
    assert before.count(option) == 1, f"{option} in {before}"
    return before[before.index(option) + 1]


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_sdtriton_serve_parses_the_containers_command_line(set_name: str):
    words = _serve_words(set_name)
    try:
        arguments = parse_arguments(words)
    except SystemExit:
        pytest.fail(f"sdtriton's parser rejects {words} (see its message above)")
    assert arguments.host == "0.0.0.0"
    assert arguments.extra == _tritonserver_args(set_name), "tritonserver must get every argument after --"
    assert arguments.drain_timeout_s == _values(set_name)["drain"]["slowestRequestSeconds"]
    assert arguments.ready_timeout_s >= _values(set_name)["server"]["startupBudgetSeconds"]


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_drain_fits_in_the_grace_period(set_name: str):
    drain = _values(set_name)["drain"]
    drain_s = drain["slowestRequestSeconds"]
    assert float(_serve_option(set_name, "--drain-timeout-s")) == drain_s
    assert float(_serve_option(set_name, "--ready-timeout-s")) >= _values(set_name)["server"]["startupBudgetSeconds"]
    triton_args = _tritonserver_args(set_name)
    assert server.drain_args(drain_s, triton_args) == [f"--exit-timeout-secs={drain_s}"]
    assert "--model-control-mode=none" in triton_args
    pre_stop = _container(set_name)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) == drain["preStopSleepSeconds"]
    # The grace period runs from the start of the stop: the preStop sleep, then the drain, then the exit.
    assert _pod(set_name)["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain_s


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_one_gpu_of_the_built_product_and_shared_memory(set_name: str):
    values = _values(set_name)
    pod_spec = _pod(set_name)["spec"]
    limits = _container(set_name)["resources"]["limits"]
    assert int(limits[values["gpu"]["resourceName"]]) == values["gpu"]["count"] == 1
    required = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = required["nodeSelectorTerms"]
    product = {"key": "nvidia.com/gpu.product", "operator": "In", "values": [values["gpu"]["product"]]}
    assert product in term["matchExpressions"]
    mounts = {mount["mountPath"]: mount["name"] for mount in _container(set_name)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"] == values["shm"]["sizeLimit"]


def test_a_cpu_deployment_asks_for_no_gpu():
    values = {**MINIMAL_VALUES, "gpu": {"enabled": False}}
    (deployment,) = [
        doc
        for text in _chart().render(values, name=RELEASE, namespace=NAMESPACE).values()
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "Deployment" and _component(doc) == SERVER
    ]
    pod_spec = deployment["spec"]["template"]["spec"]
    assert "affinity" not in pod_spec
    assert "nvidia.com/gpu" not in json.dumps(pod_spec["containers"][0]["resources"])


def _selectors(set_name: str, component: str = SERVER) -> list[dict[str, str]]:
    """Every pod selector of a component's objects: its Deployment's, Services', PodMonitors', PDBs', policies'."""
    selectors = [_one(set_name, "Deployment", component)["spec"]["selector"]["matchLabels"]]
    selectors += [service["spec"]["selector"] for service in _objects(set_name, "Service", component)]
    selectors += [pm["spec"]["selector"]["matchLabels"] for pm in _objects(set_name, "PodMonitor", component)]
    selectors += [
        pdb["spec"]["selector"]["matchLabels"] for pdb in _objects(set_name, "PodDisruptionBudget", component)
    ]
    selectors += [np["spec"]["podSelector"]["matchLabels"] for np in _objects(set_name, "NetworkPolicy", component)]
    return selectors


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_selectors_find_the_pods(set_name: str):
    pod_labels = _pod(set_name)["metadata"]["labels"]
    for selector in _selectors(set_name):
        assert selector and selector.items() <= pod_labels.items(), selector
    deployment_name = _one(set_name, "Deployment")["metadata"]["name"]
    targets = [hpa["spec"]["scaleTargetRef"] for hpa in _objects(set_name, "HorizontalPodAutoscaler")]
    targets += [so["spec"]["scaleTargetRef"] for so in _objects(set_name, "ScaledObject")]
    for target in targets:
        assert (target["kind"], target["name"]) == ("Deployment", deployment_name)


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_services_expose_the_server_and_headless_lists_pods(set_name: str):
    services = {service["metadata"]["name"]: service for service in _objects(set_name, "Service")}
    main = services.pop(_one(set_name, "Deployment")["metadata"]["name"])
    assert {port["name"]: port["port"] for port in main["spec"]["ports"]} == PORTS
    assert {port["targetPort"] for port in main["spec"]["ports"]} <= set(PORTS)
    if _values(set_name)["service"]["headless"]["enabled"]:
        (headless,) = services.values()
        assert headless["spec"]["clusterIP"] == "None"
        assert PORTS["grpc"] in {port["port"] for port in headless["spec"]["ports"]}
    else:
        assert not services


def test_some_value_set_enables_the_headless_service():
    _sets_where(lambda values: values["service"]["headless"]["enabled"])


def _check_behavior(behavior: dict[str, Any], values: dict[str, Any]) -> None:
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    doubling = [p for p in up["policies"] if p["type"] == "Percent" and p["value"] >= 100]
    assert doubling and min(p["periodSeconds"] for p in doubling) <= MAX_DOUBLING_PERIOD_S
    assert up.get("selectPolicy", "Max") == "Max", "the fastest scale-up policy must win"
    assert down["stabilizationWindowSeconds"] >= MIN_SCALE_DOWN_WINDOW_S
    assert down["stabilizationWindowSeconds"] == values["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"]
    assert all(p["type"] == "Pods" for p in down["policies"])


@pytest.mark.parametrize("set_name", _sets_where(_provider_is("prometheus-adapter")))
def test_prometheus_adapter_scaling(set_name: str):
    values = _values(set_name)
    hpa = _one(set_name, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert not _objects(set_name, "ScaledObject")
    assert "replicas" not in _one(set_name, "Deployment")["spec"], "the HPA owns the pod count"
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (
        values["autoscaling"]["minReplicas"],
        values["autoscaling"]["maxReplicas"],
    )
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": str(values["autoscaling"]["targetInFlightPerPod"]),
    }
    served = {rule["name"]["as"] for rule in _adapter_rules(set_name)}
    assert metric["pods"]["metric"]["name"] in served, "the HPA asks for a metric the adapter rules do not serve"
    for rule in _adapter_rules(set_name):
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    _check_behavior(spec["behavior"], values)


@pytest.mark.parametrize("set_name", _sets_where(_provider_is("keda")))
def test_keda_scaling(set_name: str):
    values = _values(set_name)
    scaled = _one(set_name, "ScaledObject")
    assert not _objects(set_name, "HorizontalPodAutoscaler"), "KEDA makes the HPA: a second one would fight it"
    assert not [cm for cm in _objects(set_name, "ConfigMap") if "adapter" in cm["metadata"]["name"]]
    assert "replicas" not in _one(set_name, "Deployment")["spec"]
    spec = scaled["spec"]
    assert spec["minReplicaCount"] >= 1, "never to zero: a pod loads its engines for minutes"
    assert spec["maxReplicaCount"] == values["autoscaling"]["maxReplicas"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert float(trigger["metadata"]["threshold"]) == values["autoscaling"]["targetInFlightPerPod"]
    assert f'namespace="{NAMESPACE}"' in trigger["metadata"]["query"]
    _check_behavior(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"], values)


@pytest.mark.parametrize("set_name", _sets_where(_provider_is("none")))
def test_no_autoscaling_keeps_the_replicas(set_name: str):
    assert not _objects(set_name, "HorizontalPodAutoscaler") and not _objects(set_name, "ScaledObject")
    assert _one(set_name, "Deployment")["spec"]["replicas"] == _values(set_name)["replicas"]


def test_the_metric_name_finder_findsmetric_names_only():
    expr = 'sum by (pod) (foo_running{pod=~"a-.*"} + bar_waiting{x="y"}) or sum(rate(baz_total[5m])) > 0.5'
    assert metric_names(expr) == {"foo_running", "bar_waiting", "baz_total"}


def _queries_prometheus(values: dict[str, Any]) -> bool:
    return values["autoscaling"]["provider"] != "none" or values["prometheusRule"]["enabled"]


@pytest.mark.parametrize("set_name", _sets_where(_queries_prometheus))
def test_monitoring_objects_query_only_metrics_that_exist(set_name: str):
    recorded = recorded_series(RULES)
    scaling_known = OUR_SERIES | recorded | TRITON_METRICS
    for query in _scaling_queries(set_name):
        unknown = metric_names(query) - scaling_known
        assert not unknown, f"{set_name}: autoscaling reads {query!r}, with metrics nobody exports: {unknown}"
    for rule_object in _objects(set_name, "PrometheusRule"):
        for rule in [rule for group in rule_object["spec"]["groups"] for rule in group["rules"]]:
            names = metric_names(str(rule["expr"])) - gateway_exposition().series
            unknown = {name for name in names - OUR_SERIES - recorded if not name.startswith(KUBE_STATE_PREFIX)}
            assert not unknown, f"{set_name}: {rule.get('record') or rule.get('alert')} reads unknown {unknown}"
    # In flight = running + waiting, from the engine's own gauges.
    scaling = " ".join(_scaling_queries(set_name))
    if scaling:
        assert {REQUESTS_RUNNING.name, REQUESTS_WAITING.name} <= metric_names(scaling)


def test_the_chart_ships_the_projects_rules_unchanged():
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), (
        "docker/helm/sdtriton/files/prometheus_rules.yaml differs from monitoring/prometheus_rules.yaml: copy it over"
    )
    (set_name, *_) = _sets_where(lambda values: values["prometheusRule"]["enabled"])
    rendered = _one(set_name, "PrometheusRule")["spec"]["groups"]
    assert rendered == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize("source", ["pvc", "nfs", "s3", "gcs"])
def test_each_repository_source_reaches_the_server(source: str):
    (set_name, *_) = _sets_where(_source_is(source))
    values = _values(set_name)["modelRepository"]
    container = _container(set_name)
    env = {item["name"]: item for item in container.get("env", [])}
    volumes = {volume["name"]: volume for volume in _pod(set_name)["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    repository_args = [arg for arg in _tritonserver_args(set_name) if arg.startswith("--model-repository=")]
    if source in {"pvc", "nfs"}:
        assert "command" not in container, "the image's entrypoint.sh checks the deploy record against the GPU"
        assert env["SDTRITON_DEPLOY_DIR"]["value"] == DEPLOY_MOUNT
        mount = mounts[DEPLOY_MOUNT]
        assert mount["readOnly"] is True
        volume = volumes[mount["name"]]
        if source == "pvc":
            assert volume["persistentVolumeClaim"]["claimName"] == values["pvc"]["claimName"]
        else:
            assert volume["nfs"] == {"server": values["nfs"]["server"], "path": values["nfs"]["path"], "readOnly": True}
        assert not repository_args
    else:
        url = values[source]["url"]
        assert url.startswith({"s3": "s3://", "gcs": "gs://"}[source])
        assert repository_args == [f"--model-repository={url}"]
        secret = values[source]["existingSecret"]
        if source == "s3" and secret:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
        if source == "gcs":
            assert ("GOOGLE_APPLICATION_CREDENTIALS" in env) == bool(secret)


@pytest.mark.parametrize("set_name", _sets_where(lambda values: values["networkPolicy"]["enabled"]))
def test_network_policy_opens_inference_to_clients_and_metrics_to_monitoring(set_name: str):
    values = _values(set_name)["networkPolicy"]
    policy = _one(set_name, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    by_ports = {tuple(sorted(port["port"] for port in rule["ports"])): rule["from"] for rule in policy["ingress"]}
    assert set(by_ports) == {("grpc", "http"), ("metrics",)}
    (monitoring,) = by_ports[("metrics",)]
    assert monitoring == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": values["monitoringNamespace"]}}
    }
    peers = by_ports[("grpc", "http")]
    if _values(set_name)["gateway"]["enabled"]:
        gateway_pods = {
            "podSelector": {"matchLabels": _gateway_deployment(set_name)["spec"]["selector"]["matchLabels"]}
        }
        assert gateway_pods in peers, "the gateway must reach Triton's gRPC port"
        peers = [peer for peer in peers if peer != gateway_pods]
    (clients,) = peers
    if values["clients"]["namespaces"]:
        (expression,) = clients["namespaceSelector"]["matchExpressions"]
        assert expression["values"] == values["clients"]["namespaces"]
    if values["clients"]["podLabels"]:
        assert clients["podSelector"]["matchLabels"] == values["clients"]["podLabels"]


@pytest.mark.parametrize("set_name", _sets_where(lambda values: values["podDisruptionBudget"]["enabled"]))
def test_disruption_budget_takes_one_pod_at_a_time(set_name: str):
    pdb = _one(set_name, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == _values(set_name)["podDisruptionBudget"]["maxUnavailable"]


def test_every_autoscaling_provider_and_repository_source_has_a_value_set():
    for provider in ("prometheus-adapter", "keda", "none"):
        _sets_where(_provider_is(provider))
    for source in ("pvc", "nfs", "s3", "gcs"):
        _sets_where(_source_is(source))


# --- the gateway ----------------------------------------------------------------------------------------------

GATEWAY_PORT_NAME = "http"
# What a Secret that the chart does not make holds, for the command line's sake (the chart never sees it).
SECRET_PLACEHOLDER = "redis://from-a-secret:6379/0"


def _gateway_sets() -> list[str]:
    return _sets_where(lambda values: values["gateway"]["enabled"])


def _gateway_deployment(set_name: str) -> dict[str, Any]:
    return _one(set_name, "Deployment", GATEWAY)


def _gateway_container(set_name: str) -> dict[str, Any]:
    (container,) = _gateway_deployment(set_name)["spec"]["template"]["spec"]["containers"]
    return container


def _gateway_words(set_name: str) -> list[str]:
    """The gateway container's `sdtriton` words, with Kubernetes' $(VAR) expansion done from its environment."""
    container = _gateway_container(set_name)
    assert container["command"] == ["sdtriton"], "the image's entrypoint starts Triton: the gateway needs its own"
    env = {item["name"]: item for item in container["env"]}
    words = []
    for word in container["args"]:
        for name in re.findall(r"\$\((\w+)\)", word):
            # Kubernetes leaves a $(NAME) it cannot resolve as it is: the gateway would get the literal text.
            assert name in env, f"{set_name}: {word} names no environment variable of the container"
            value = env[name].get("value", SECRET_PLACEHOLDER)
            word = word.replace(f"$({name})", value)
        words.append(word)
    return words


def _gateway_arguments(set_name: str) -> Any:
    words = _gateway_words(set_name)
    try:
        return parse_arguments(words)
    except SystemExit:
        pytest.fail(f"sdtriton's parser rejects {words} (see its message above)")


def _secrets(set_name: str) -> dict[str, dict[str, Any]]:
    return {secret["metadata"]["name"]: secret for secret in _objects(set_name, "Secret", GATEWAY)}


def _pod_selected(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
    return selector.items() <= pod_labels.items()


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_command_line_parses_with_sdtriton_gateway(set_name: str):
    arguments = _gateway_arguments(set_name)
    assert arguments.command == "gateway"
    assert arguments.host == "0.0.0.0", "in a pod the gateway must listen beyond loopback"
    ports = {port["name"]: port["containerPort"] for port in _gateway_container(set_name)["ports"]}
    assert arguments.port == ports[GATEWAY_PORT_NAME]
    # Triton's Service and its gRPC port, as the chart names them.
    services = {service["metadata"]["name"]: service for service in _objects(set_name, "Service")}
    triton_service = services[_one(set_name, "Deployment")["metadata"]["name"]]
    grpc_port = {port["name"]: port["port"] for port in triton_service["spec"]["ports"]}["grpc"]
    assert arguments.triton == f"grpc://{triton_service['metadata']['name']}:{grpc_port}"


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_settings_load_from_the_rendered_keys_and_url(set_name: str, tmp_path: Path):
    """The gateway's own settings code accepts the rendered Triton URL and keys, and would listen on 0.0.0.0."""
    arguments = _gateway_arguments(set_name)
    container = _gateway_container(set_name)
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {
        volume["name"]: volume for volume in _gateway_deployment(set_name)["spec"]["template"]["spec"]["volumes"]
    }
    keys_dir = arguments.api_keys_file.parent.as_posix()
    assert mounts[keys_dir]["readOnly"] is True
    secret_volume = volumes[mounts[keys_dir]["name"]]["secret"]
    (item,) = secret_volume["items"]
    assert item["path"] == arguments.api_keys_file.name
    api_keys = _values(set_name)["gateway"]["apiKeys"]
    secrets = _secrets(set_name)
    if api_keys["existingSecret"]:
        assert (secret_volume["secretName"], item["key"]) == (api_keys["existingSecret"], api_keys["key"])
        assert secret_volume["secretName"] not in secrets, "the chart must not overwrite the given Secret"
        keys_text = "an-api-key-from-the-secret\n"
    else:
        keys_text = base64.b64decode(secrets[secret_volume["secretName"]]["data"][item["key"]]).decode()
        assert [key.key_id for key in parse_api_keys(keys_text, source="chart")] == [
            key.key_id for key in parse_api_keys("\n".join(api_keys["keys"]), source="values")
        ]
    keys_file = tmp_path / arguments.api_keys_file.name
    keys_file.write_text(keys_text)
    settings = load_settings(triton_url=arguments.triton, data_dir=tmp_path, api_keys_file=keys_file)
    assert settings.api_keys
    check_exposure(arguments.host, settings.api_keys)
    # The data directory is a volume of its own (the root file system is read-only).
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    data_mount = mounts[arguments.data_dir.as_posix()]
    assert not data_mount.get("readOnly")
    data_volume = volumes[data_mount["name"]]
    claim = _values(set_name)["gateway"]["persistence"]["existingClaim"]
    if claim:
        assert data_volume["persistentVolumeClaim"]["claimName"] == claim
    else:
        assert data_volume["emptyDir"] == {}


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_job_workers_and_lease_are_the_values(set_name: str):
    """What the gateway's parser reads from the pod's command line is what the values ask (a lease the gateway's own
    settings accept)."""
    arguments = _gateway_arguments(set_name)
    jobs = _values(set_name)["gateway"]["jobs"]
    assert (arguments.job_workers, arguments.job_lease_s) == (jobs["workers"], jobs["leaseSeconds"])
    assert arguments.job_lease_s >= MIN_JOB_LEASE_S


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_jobs_store_is_redis_when_given_else_sqlite_in_the_data_volume(set_name: str):
    arguments = _gateway_arguments(set_name)
    words = _gateway_words(set_name)
    store = words[words.index("--jobs-store") + 1]
    assert store == vars(arguments)["jobs_store"]
    redis = _values(set_name)["gateway"]["redis"]
    env = {item["name"]: item for item in _gateway_container(set_name)["env"]}
    (store_variable,) = re.findall(
        r"\$\((\w+)\)", _gateway_container(set_name)["args"][words.index("--jobs-store") + 1]
    )
    if redis["existingSecret"]:
        reference = env[store_variable]["valueFrom"]["secretKeyRef"]
        assert (reference["name"], reference["key"]) == (redis["existingSecret"], redis["key"])
    elif redis["url"]:
        assert store == redis["url"]
    else:
        assert store.startswith("sqlite:///")
        path = Path(store.removeprefix("sqlite://"))
        assert path.parent == arguments.data_dir, "the SQLite jobs must live in the data volume"
    deployment = _gateway_deployment(set_name)
    several = _values(set_name)["gateway"]["autoscaling"]["enabled"] or deployment["spec"].get("replicas", 1) > 1
    if several:
        assert store.startswith(("redis://", "rediss://")), "replicas share jobs only through Redis"


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_webhook_secret_comes_from_a_secret(set_name: str):
    webhook = _values(set_name)["gateway"]["webhook"]
    env = {item["name"]: item for item in _gateway_container(set_name)["env"]}
    configured = webhook["existingSecret"] or webhook["secret"]
    assert (WEBHOOK_SECRET_ENVIRONMENT in env) == bool(configured)
    assert "--webhook-secret" not in _gateway_words(set_name), "a secret on the command line shows in ps"
    if configured:
        reference = env[WEBHOOK_SECRET_ENVIRONMENT]["valueFrom"]["secretKeyRef"]
        assert reference["key"] == webhook["key"]
        if webhook["existingSecret"]:
            assert reference["name"] == webhook["existingSecret"]
        else:
            data = _secrets(set_name)[reference["name"]]["data"]
            assert base64.b64decode(data[reference["key"]]).decode() == webhook["secret"]


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_probes_and_scrape_reach_its_real_routes(set_name: str):
    container = _gateway_container(set_name)
    routes = gateway_exposition().routes
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": GATEWAY_PORT_NAME}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": GATEWAY_PORT_NAME}
    assert {"/readyz", "/healthz", "/metrics"} <= routes
    for monitor in _objects(set_name, "PodMonitor", GATEWAY):
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"]) == (GATEWAY_PORT_NAME, "/metrics")
    assert bool(_objects(set_name, "PodMonitor", GATEWAY)) == _values(set_name)["podMonitor"]["enabled"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]), "the gateway needs no GPU"
    assert "affinity" not in _gateway_deployment(set_name)["spec"]["template"]["spec"]


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_and_triton_selectors_find_their_own_pods_only(set_name: str):
    gateway_pod = _gateway_deployment(set_name)["spec"]["template"]["metadata"]["labels"]
    triton_pod = _pod(set_name)["metadata"]["labels"]
    for selector in _selectors(set_name, GATEWAY):
        assert _pod_selected(selector, gateway_pod) and not _pod_selected(selector, triton_pod), selector
    for selector in _selectors(set_name):
        assert not _pod_selected(selector, gateway_pod), f"a Triton selector takes the gateway's pods: {selector}"
    (service,) = _objects(set_name, "Service", GATEWAY)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == GATEWAY_PORT_NAME
    assert port["port"] == _values(set_name)["gateway"]["service"]["port"]


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_secret_references_resolve(set_name: str):
    """Every Secret the gateway's pod names is one the chart makes (with that key) or one the values name."""
    values = _values(set_name)["gateway"]
    given = {values[group]["existingSecret"] for group in ("apiKeys", "webhook", "redis")} - {""}
    made = _secrets(set_name)
    pod_spec = _gateway_deployment(set_name)["spec"]["template"]["spec"]
    references = [
        (volume["secret"]["secretName"], item["key"])
        for volume in pod_spec["volumes"]
        if "secret" in volume
        for item in volume["secret"]["items"]
    ]
    references += [
        (ref["name"], ref["key"])
        for item in pod_spec["containers"][0]["env"]
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    ]
    assert references
    for name, key in references:
        assert name in given or key in made[name]["data"], f"{set_name}: Secret {name} (key {key}) is nowhere"
    assert not given & set(made), "the chart must not make a Secret the values say exists"


@pytest.mark.parametrize("set_name", _gateway_sets())
def test_gateway_scales_on_the_request_rate_it_exports(set_name: str):
    autoscaling = _values(set_name)["gateway"]["autoscaling"]
    hpas = _objects(set_name, "HorizontalPodAutoscaler", GATEWAY)
    config_maps = _objects(set_name, "ConfigMap", GATEWAY)
    deployment = _gateway_deployment(set_name)
    if not autoscaling["enabled"]:
        assert not hpas and not config_maps
        assert deployment["spec"]["replicas"] == _values(set_name)["gateway"]["replicas"]
        return
    (hpa,) = hpas
    assert "replicas" not in deployment["spec"], "the HPA owns the pod count"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (autoscaling["minReplicas"], autoscaling["maxReplicas"])
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": str(autoscaling["targetRequestsPerSecondPerPod"]),
    }
    (config_map,) = config_maps
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"], "the HPA asks for a metric the rule does not serve"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    exposition = gateway_exposition()
    for key in ("seriesQuery", "metricsQuery"):
        query = _adapter_query(rule[key])
        names = metric_names(query)
        assert names and names <= exposition.series, f"{key} reads {names - exposition.series}, which the gateway lacks"
    # The series the adapter finds is the one whose rate it serves, a counter.
    assert re.fullmatch(rule["name"]["matches"], "sdtriton_gateway_requests_total")
    assert "rate(" in rule["metricsQuery"]
    (route_pattern,) = re.findall(r'route=~"([^"]+)"', rule["metricsQuery"])
    assert "route" in exposition.labels["sdtriton_gateway_requests_total"]
    api = {route for route in exposition.routes if re.fullmatch(route_pattern, route)}
    assert api == {route for route in exposition.routes if route.startswith("/v1/")}, (
        "probes and scrapes must not count"
    )


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def test_gateway_off_renders_no_gateway_object_and_no_reference_to_one():
    every_option = {
        **MINIMAL_VALUES,
        "podMonitor": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True, "clients": {"podLabels": {"app": "web"}}},
    }
    on = _render(every_option)
    gateway_kinds = {obj["kind"] for obj in on if _component(obj) == GATEWAY}
    assert {"Deployment", "Service", "PodMonitor", "PodDisruptionBudget"} <= gateway_kinds
    off = _render({**every_option, "gateway": {"enabled": False}})
    assert not [obj for obj in off if _component(obj) == GATEWAY]
    assert "gateway" not in json.dumps(off)
    # Turning the gateway on or off leaves Triton's objects as they were, but for the gRPC peer it needs.
    without_policy = [obj for obj in on if _component(obj) == SERVER and obj["kind"] != "NetworkPolicy"]
    assert without_policy == [obj for obj in off if obj["kind"] != "NetworkPolicy"]
    for set_name in _sets_where(lambda values: not values["gateway"]["enabled"]):
        assert not [obj for obj in _rendered(set_name) if _component(obj) == GATEWAY]


def test_some_value_set_covers_each_gateway_option():
    gateway = lambda check: lambda values: values["gateway"]["enabled"] and check(values["gateway"])  # noqa: E731
    _sets_where(gateway(lambda g: g["autoscaling"]["enabled"]))
    _sets_where(gateway(lambda g: not g["autoscaling"]["enabled"] and g["replicas"] > 1))
    _sets_where(gateway(lambda g: g["redis"]["existingSecret"]))
    _sets_where(gateway(lambda g: g["redis"]["url"]))
    _sets_where(gateway(lambda g: not g["redis"]["url"] and not g["redis"]["existingSecret"]))
    _sets_where(gateway(lambda g: g["apiKeys"]["keys"]))
    _sets_where(gateway(lambda g: g["webhook"]["secret"]))
    _sets_where(gateway(lambda g: g["webhook"]["existingSecret"]))
    _sets_where(gateway(lambda g: g["persistence"]["existingClaim"]))
    _sets_where(lambda values: not values["gateway"]["enabled"])
    _sets_where(lambda values: values["gateway"]["enabled"] and values["networkPolicy"]["enabled"])


# --- KServe and the README -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kserve_example_is_valid_and_runs_the_servers_triton(kube_version: str):
    service = yaml.safe_load(KSERVE_EXAMPLE.read_text())
    validate_manifest(service, kube_version)
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    triton_tag = re.search(r"^FROM nvcr\.io/nvidia/tritonserver:(\S+) AS server$", DOCKERFILE.read_text(), re.M)
    assert triton_tag and model["runtimeVersion"] == triton_tag.group(1), "KServe's Triton must be the image's"
    assert "--strict-readiness=true" in model["args"] and "--model-control-mode=none" in model["args"]
    assert int(model["resources"]["limits"]["nvidia.com/gpu"]) == 1
    mounts = {mount["mountPath"]: mount["name"] for mount in model["volumeMounts"]}
    (shm,) = [v for v in service["spec"]["predictor"]["volumes"] if v["name"] == mounts["/dev/shm"]]
    assert shm["emptyDir"]["medium"] == "Memory"


def test_the_readme_explains_every_value_group():
    text = README.read_text()
    groups = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [group for group in groups if f"`{group}" not in text]
    assert not missing, f"docker/helm/README.md does not explain {missing}"
    assert "sdtriton scale-sim --slo-p99-s" in text and "sdtriton plan" in text
    assert "helm/README.md" in (ROOT / "docker" / "README.md").read_text(), "docker/README.md must link the chart"
