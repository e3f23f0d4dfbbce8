"""The Dockerfile builds the image the manifests name, on the Ray they announce, running as non-root."""

from __future__ import annotations

import re
from pathlib import Path

from mm1.config import ClusterConfig
from mm1.k8s.pods import RAY_UID
from mm1.k8s.render import RAY_VERSION

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_is_the_ray_version_kuberay_is_told():
    args = dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)
    assert args["RAY_IMAGE"] == f"rayproject/ray:{RAY_VERSION}-py311"
    assert ("FROM", "${RAY_IMAGE}") in instructions()


def test_image_runs_as_the_non_root_ray_user():
    users = [a for i, a in instructions() if i == "USER"]
    assert users[-1] == "ray"  # Ray images' user, uid 1000 = the pods' runAsUser
    assert RAY_UID == 1000


def test_project_is_installed_with_pip_keeping_the_images_ray():
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert "-c /tmp/constraints.txt" in runs and "ray=={ray.__version__}" in runs
    sources = {a.split()[-2] for i, a in instructions() if i == "COPY"}
    assert {"mm1", "services", "workflows"} <= sources


def test_build_context_is_an_allow_list_that_never_ships_secrets():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "mm1", "services", "workflows"}
    assert "**/.env" in lines


def test_manifests_and_compose_default_to_the_image_this_file_builds():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"${{MM1_IMAGE:-{ClusterConfig().image}}}" in compose
