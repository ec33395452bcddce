"""The chart renders, lints, and every manifest passes its schema: Kubernetes' for core kinds,
KubeRay's CRD for the RayService. Plus what a reviewer checks by eye: security context,
GPU scheduling, autoscaling, secrets by reference only, probes, labels."""

from __future__ import annotations

import copy
import functools
import hashlib
from typing import Any

import pytest
import yaml

from tests.helm.conftest import (
    CHART,
    CRD,
    INSTALL_HINT,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    load_values,
    missing_tool,
    ray_pod_templates,
    render,
)

# kubernetes-validate bundles the API schemas per Kubernetes version; the chart declares
# kubeVersion >= 1.25, so check the oldest supported minor and the newest bundled one.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
CORE_KINDS = {"ServiceAccount", "Deployment", "Service", "PersistentVolumeClaim", "Ingress", "NetworkPolicy"}


# ----- lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_chart_lints_clean_in_strict_mode(helm, value_set):
    report = helm.lint(str(CHART), load_values(value_set), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not problems, problems


def test_chart_packages_without_its_ci_values(helm, tmp_path):
    import tarfile

    archive = helm.package(str(CHART), destination=str(tmp_path))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "mmserve/values.schema.json" in names and "mmserve/templates/NOTES.txt" in names
    assert not [n for n in names if n.startswith("mmserve/ci/")]


# ----- schemas ------------------------------------------------------------------------------


@functools.cache
def kuberay_crd() -> dict[str, Any]:
    # 1 MB of YAML: libyaml's loader when PyYAML has it (seconds faster than the pure one).
    return yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def rayservice_schema(strict: bool) -> dict[str, Any]:
    """The CRD's openAPIV3Schema for ray.io/v1. `strict` closes every object that has
    `properties` (as kubectl's server-side field validation does): the API server would
    otherwise prune an unknown field silently, and a typo such as `minReplica` would vanish."""
    (version,) = [v for v in kuberay_crd()["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    if strict:
        _close_objects(schema)
    return schema


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


def crd_errors(document: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(rayservice_schema(strict=True))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_crd_is_the_pinned_kuberay_release():
    # KubeRay v1.7.0's RayService CRD, as shared/README.md records it (sha256 0a8fc325...07ab).
    digest = hashlib.sha256(CRD.read_bytes()).hexdigest()
    assert digest.startswith("0a8fc325") and digest.endswith("07ab"), digest
    crd = kuberay_crd()
    assert crd["spec"]["names"]["kind"] == "RayService"
    assert any(v["name"] == "v1" and v["served"] for v in crd["spec"]["versions"])


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rayservice_passes_the_kuberay_crd(rendered, value_set):
    rayservice = rendered[value_set].one("RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert crd_errors(rayservice) == []


def test_crd_check_catches_a_typo_and_a_bad_type(rendered):
    broken = copy.deepcopy(rendered["default"].one("RayService"))
    group = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    errors = "\n".join(crd_errors(broken))
    assert "minReplicas' is a required property" in errors
    assert "'minReplica' was unexpected" in errors
    assert "rayStartParams.num-cpus: 0 is not of type 'string'" in errors


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_core_manifests_pass_kubernetes_schemas(rendered, value_set, kube_version):
    kubernetes_validate = _kubernetes_validate()
    documents = [d for d in rendered[value_set].documents if d["kind"] != "RayService"]
    assert {d["kind"] for d in documents} <= CORE_KINDS, "a kind this test does not know"
    for document in documents:
        kubernetes_validate.validate(document, kube_version, strict=True)


@pytest.mark.parametrize("value_set", ["default", "gpu"])
def test_ray_pod_templates_pass_the_core_pod_schema(rendered, value_set):
    # The CRD embeds PodTemplateSpec; this checks the same templates against Kubernetes' own
    # Pod schema (strict), as the API server would when KubeRay creates the pods.
    kubernetes_validate = _kubernetes_validate()
    for group, template in ray_pod_templates(rendered[value_set].one("RayService")).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"check-{group}", **template["metadata"]}}
        pod["spec"] = template["spec"]
        kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_kubernetes_schema_check_catches_a_bad_manifest(rendered):
    kubernetes_validate = _kubernetes_validate()
    deployment = copy.deepcopy(rendered["default"].one("Deployment"))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(rendered["default"].one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError as exc:
        missing_tool(f"kubernetes-validate is not installed ({exc}); {INSTALL_HINT}")
    return kubernetes_validate


# ----- what the default install contains ----------------------------------------------------


def test_default_install_is_a_rayservice_with_mlflow(rendered):
    release = rendered["default"]
    assert release.kinds() == {"RayService", "ServiceAccount", "Deployment", "Service", "PersistentVolumeClaim"}
    mlflow = release.one("Deployment")
    assert mlflow["metadata"]["name"] == f"{RELEASE}-mmserve-mlflow"
    assert mlflow["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_object_has_the_standard_labels(rendered, value_set):
    for document in rendered[value_set].documents:
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mmserve"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("mmserve-")


def test_fullname_override_and_name_override(helm):
    names = {d["metadata"]["name"] for d in render(helm, {"fullnameOverride": "serving"}).documents}
    assert names == {"serving", "serving-mlflow"}
    names = {d["metadata"]["name"] for d in render(helm, {"nameOverride": "mm"}).documents}
    assert names == {f"{RELEASE}-mm", f"{RELEASE}-mm-mlflow"}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_container_is_non_root_and_locked_down(rendered, value_set):
    release = rendered[value_set]
    pod_specs = [d["spec"]["template"]["spec"] for d in release.of_kind("Deployment")]
    rayservice = release.one("RayService")
    pod_specs += [t["spec"] for t in ray_pod_templates(rayservice).values()]
    containers = [c for spec in pod_specs for c in spec["containers"]]
    autoscaler = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions")
    contexts = [c["securityContext"] for c in containers] + ([autoscaler["securityContext"]] if autoscaler else [])
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["serviceAccountName"] == f"{RELEASE}-mmserve"
    for context in contexts:
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not context.get("privileged")
    for container in containers:
        assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]


def test_only_the_autoscaling_head_mounts_a_service_account_token(rendered):
    templates = ray_pod_templates(rendered["default"].one("RayService"))
    assert templates["head"]["spec"]["automountServiceAccountToken"] is True  # KubeRay's autoscaler sidecar
    assert templates["cpu"]["spec"]["automountServiceAccountToken"] is False
    assert rendered["default"].one("ServiceAccount")["automountServiceAccountToken"] is False
    fixed = ray_pod_templates(rendered["no-autoscaling"].one("RayService"))
    assert fixed["head"]["spec"]["automountServiceAccountToken"] is False


def test_ray_pods_are_annotated_for_prometheus(rendered):
    for template in ray_pod_templates(rendered["gpu"].one("RayService")).values():
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8000"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == 8000 and ports["metrics"] == 8080


# ----- Ray cluster: groups, GPUs, autoscaling -----------------------------------------------


def test_default_cluster_autoscales_a_cpu_group(rendered):
    cluster = rendered["default"].one("RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["upscalingMode"] == "Default"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == ("cpu", 1, 1, 4)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits


def test_gpu_group_requests_gpus_and_lands_on_gpu_nodes(rendered):
    rayservice = rendered["gpu"].one("RayService")
    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (1, 1, 4)
    spec = gpu["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["containers"][0]["image"] == "mmserve:0.1.0-gpu"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_autoscaling_off_pins_every_group_to_its_replicas(rendered):
    cluster = rendered["no-autoscaling"].one("RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in cluster
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ray": {"workers": {"cpu": {"replicas": 9}}}}, "need minReplicas <= replicas <= maxReplicas"),
        ({"ray": {"workers": {"cpu": {"enabled": False}}}}, "enable ray.workers.cpu or ray.workers.gpu"),
        ({"serve": {"tasks": {"captioning": {"num_replicas": 2}}}}, "set num_replicas or autoscaling, not both"),
        (
            {"serve": {"tasks": {"captioning": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}}}},
            "min_replicas (5) is above max_replicas (2)",
        ),
        (
            {"serve": {"tasks": {"captioning": {"max_ongoing_requests": 8}}}},
            "target_ongoing_requests (16) is above max_ongoing_requests (8)",
        ),
        ({"mlflow": {"enabled": False}}, "set mlflow.enabled=true or mlflow.externalUri"),
        ({"mlflow": {"externalUri": "http://mlflow:5000"}}, "set mlflow.enabled=false with it"),
        ({"mlflow": {"artifacts": {"type": "s3"}}}, "needs mlflow.artifacts.s3.destination"),
        (
            {"mlflow": {"artifacts": {"type": "s3", "s3": {"destination": "s3://b/p"}}}},
            "needs mlflow.artifacts.s3.existingSecret",
        ),
    ],
)
def test_inconsistent_values_fail_to_render_with_a_reason(helm, values, message):
    with pytest.raises(helm.HelmError) as error:
        render(helm, values)
    assert message in str(error.value)


# ----- env, secrets, MLflow -----------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_ray_pods_get_the_tracking_uri_by_env(rendered):
    for value_set, uri in [
        ("default", f"http://{RELEASE}-mmserve-mlflow.{NAMESPACE}.svc:5000"),
        ("external-mlflow", "http://mlflow.mlops.svc.cluster.local:5000"),
    ]:
        for template in ray_pod_templates(rendered[value_set].one("RayService")).values():
            (container,) = template["spec"]["containers"]
            assert _env(container)["MLFLOW_TRACKING_URI"] == uri
            assert _env(container)["MMSERVE_DATA_DIR"] == "/home/ray/.mmserve"


def test_external_mlflow_deploys_no_server_and_passes_credentials_by_reference(rendered):
    release = rendered["external-mlflow"]
    assert release.kinds() == {"RayService", "ServiceAccount"}
    for template in ray_pod_templates(release.one("RayService")).values():
        assert template["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "mlflow-client"}}]


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_secrets_are_referenced_never_rendered(rendered, value_set):
    release = rendered[value_set]
    assert "Secret" not in release.kinds()
    text = yaml.safe_dump_all(release.documents)
    for word in ("password:", "AWS_SECRET_ACCESS_KEY: ", "postgresql://", "aws_secret"):
        assert word not in text


def test_mlflow_server_with_sqlite_on_a_volume_serves_artifacts(rendered):
    release = rendered["default"]
    (container,) = release.one("Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args
    assert "--serve-artifacts" in args and "--artifacts-destination=/mlflow/artifacts" in args
    allowed = next(a for a in args if a.startswith("--allowed-hosts="))
    assert f"{RELEASE}-mmserve-mlflow.{NAMESPACE}.svc:*" in allowed.split("=", 1)[1].split(",")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    pvc = release.one("PersistentVolumeClaim")
    volumes = release.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in volumes
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    service = release.one("Service")
    assert service["spec"]["ports"][0]["port"] == 5000


def test_mlflow_external_stores_come_from_secrets(rendered):
    release = rendered["external-stores"]
    assert "PersistentVolumeClaim" not in release.kinds()
    (container,) = release.one("Deployment")["spec"]["template"]["spec"]["containers"]
    args, env = container["args"], _env(container)
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert "--artifacts-destination=s3://models/mmserve" in args
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"secretKeyRef": {"name": "mlflow-db", "key": "uri"}}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "mlflow-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "mlflow-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.storage.svc:9000"


# ----- exposure -----------------------------------------------------------------------------


def test_ingress_routes_to_kuberays_serve_service_with_tls(rendered):
    release = rendered["ingress"]
    ingress = release.one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "mmserve-tls", "hosts": ["mmserve.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-mmserve-serve-svc", "port": {"number": 8000}}
    assert "https://mmserve.example.com/v2/health/ready" in release.notes


def test_network_policies_select_this_releases_pods(rendered):
    policies = {p["metadata"]["name"]: p for p in rendered["ingress"].of_kind("NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-mmserve-ray", f"{RELEASE}-mmserve-mlflow"}
    ray = policies[f"{RELEASE}-mmserve-ray"]["spec"]
    assert ray["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    serve_rule = next(r for r in ray["ingress"] if r.get("ports") == [{"port": 8000, "protocol": "TCP"}])
    assert serve_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    metrics_rule = next(r for r in ray["ingress"] if {"port": 8080, "protocol": "TCP"} in r.get("ports", []))
    assert {"port": 8000, "protocol": "TCP"} in metrics_rule["ports"]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # Every Ray pod carries the label the policy selects.
    for template in ray_pod_templates(rendered["ingress"].one("RayService")).values():
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "ray"


def test_notes_tell_how_to_call_the_server(rendered):
    notes = rendered["default"].notes
    assert f"port-forward svc/{RELEASE}-mmserve-serve-svc 8000:8000" in notes
    assert "/v1/captioning" in notes and "/v2/health/ready" in notes
