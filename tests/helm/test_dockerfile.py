"""The Dockerfile, checked without building it (no container runtime here): hadolint, the
Ray base image and version, the non-root user, no secrets, a health check, the build context."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import CHART, ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
SECRET_WORDS = re.compile(r"(?i)(password|passwd|secret|token|credential|api_?key|access_?key|private_?key)")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def build_args() -> dict[str, str]:
    return dict(
        args.split("=", 1)
        for op, args in instructions()
        if op == "ARG" and "=" in args and "$" not in args.split("=", 1)[0]
    )


def test_hadolint_passes():
    hadolint = tool("hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path: Path):
    hadolint = tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nUSER root\nRUN pip install mmserve\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_multi_stage_on_the_official_ray_image_of_the_pinned_version():
    args = build_args()
    stages = [a for op, a in instructions() if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for stage in stages:
        assert stage.split()[0] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${RAY_VARIANT}"
    assert args["RAY_VARIANT"] == "cpu"  # CUDA with --build-arg RAY_VARIANT=gpu (or cu1xx)
    assert re.fullmatch(r"py3\d+", args["PYTHON_TAG"])
    ray_version = args["RAY_VERSION"]
    # The chart's rayVersion (KubeRay) is the image's Ray.
    assert yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["version"] == ray_version
    # The image keeps the base's Ray: installs are constrained to RAY_VERSION and checked.
    run = " ".join(a for op, a in instructions() if op == "RUN")
    assert "ray[serve]==${RAY_VERSION}" in run and "--constraint" in run
    assert "ray.__version__ == '${RAY_VERSION}'" in run


def test_ray_version_agrees_with_the_project_pin():
    from packaging.requirements import Requirement

    ray_version = build_args()["RAY_VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray"]
    assert ray.specifier.contains(ray_version), f"RAY_VERSION {ray_version} is outside pyproject's {ray}"
    pinned = [s.version for s in ray.specifier if s.operator == "=="]
    assert not pinned or pinned == [ray_version], f"pyproject pins ray {pinned}, the image uses {ray_version}"


def test_python_tag_matches_the_python_the_project_is_tested_on():
    import sys

    assert build_args()["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"


def test_runs_as_a_non_root_user():
    users = [a for op, a in instructions() if op == "USER"]
    assert users, "no USER: the image would run as the base image's user, unchecked"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "1000"  # the base image's `ray` user, numeric so runAsNonRoot can verify it
    assert yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"] == 1000


def test_no_secrets_baked_in():
    for op, args in instructions():
        if op in {"ENV", "ARG", "LABEL"}:
            names = [part.split("=", 1)[0] for part in args.split() if "=" in part] or args.split()[:1]
            assert not any(SECRET_WORDS.search(n) for n in names), f"{op} {args}"
        if op in {"COPY", "ADD"}:
            assert not re.search(r"(\.env\b|\.pem\b|\.key\b|credentials|\.netrc|id_rsa|\.aws|\.kube)", args), args
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN", args)
    assert not [a for op, a in instructions() if op == "ADD"], "ADD fetches and unpacks; COPY only"


def test_build_context_excludes_everything_but_the_sources():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**"
    included = {p[1:] for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "server", "registry", "plugins"}
    for secret in ("**/.env", "**/*.pem", "**/*.key", "**/*credentials*"):
        assert secret in patterns
    copied = [a.split()[-2] for op, a in instructions() if op == "COPY" and "--from" not in a]
    assert {c.rstrip("/") for c in copied} <= {"pyproject.toml", "README.md", "server", "registry", "plugins"} | {"./"}


def test_installs_the_built_in_plugins_with_their_weights():
    run = " ".join(a for op, a in instructions() if op == "RUN")
    assert "captioning/weights/weights.safetensors" in run  # the build checks the wheel carries them
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mmserve.plugins"]
    # The wheel (so the image) carries every bundled weights file of the built-in plugins.
    built_in = [v.split(":")[0] for v in pyproject["project"]["entry-points"]["mmserve"].values()]
    folders = {m.split(".")[2] for m in built_in if m.startswith("mmserve.plugins.")}
    assert "captioning" in folders
    files = [f for folder in folders for f in (ROOT / "plugins" / folder / "weights").glob("*") if f.is_file()]
    assert files
    for file in files:
        relative = file.relative_to(ROOT / "plugins")
        assert any(fnmatch.fnmatch(str(relative), p) for p in patterns), (
            f"{relative} is not in the wheel's package-data"
        )


def test_has_a_healthcheck_and_serves_on_the_charts_port():
    ops = dict(instructions())
    assert "/v2/health/live" in ops["HEALTHCHECK"]
    assert "8000" in ops["EXPOSE"]
    assert yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["port"] == 8000


@pytest.mark.parametrize("op", ["HEALTHCHECK", "CMD"])
def test_exec_form(op):
    assert dict(instructions())[op].split("CMD", 1)[-1].strip().startswith("[")
