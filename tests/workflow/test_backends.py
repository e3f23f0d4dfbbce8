"""The backends behind one interface (mm1.workflow.backends), and the house's layering: steps never import
mm1.k8s, mm1.k8s never imports mm1.workflow; only the backends module reaches Kubernetes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mm1 import cli
from mm1.config import loads
from mm1.workflow import backends, local
from mm1.workflow.backends import KubeRay, LocalRay, RayJobs, backend

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(names: set[str], package: str) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


def test_only_the_backends_module_of_the_workflow_imports_mm1_k8s():
    offenders = {
        path.name: sorted(under(imported_modules(path), "mm1.k8s"))
        for path in (ROOT / "mm1" / "workflow").glob("*.py")
        if path.name != "backends.py"
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    assert under(imported_modules(ROOT / "mm1" / "workflow" / "backends.py"), "mm1.k8s")


def test_mm1_k8s_never_imports_the_workflow_package():
    offenders = {
        path.name: sorted(under(imported_modules(path), "mm1.workflow"))
        for path in (ROOT / "mm1" / "k8s").glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_importing_the_steps_and_backends_loads_no_kubernetes_module():
    code = (
        "import sys\n"
        "import mm1.workflow.steps, mm1.workflow.local, mm1.workflow.backends\n"
        "print(sorted(m for m in sys.modules if m == 'mm1.k8s' or m.startswith(('mm1.k8s.', 'kubernetes'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cluster_backend_names_pick_their_backend():
    assert [type(backend(name)) for name in ("local", "ray", "k8s")] == [LocalRay, RayJobs, KubeRay]
    assert backend("local").serves_here and backend("ray").serves_here and not backend("k8s").serves_here
    with pytest.raises(ValueError, match="cluster.backend must be one of"):
        backend("slurm")


def test_disabled_deploy_on_kubernetes_serves_nothing(tmp_path):
    wf = loads("name: t\ncluster:\n  backend: k8s\ndeploy:\n  enabled: false\n  model_name: m\n")
    endpoint = backend("k8s").deploy(wf, {"checkpoint": "/nowhere"}, tmp_path, log=lambda _: None)
    assert endpoint == {"url": "", "model": "m", "sample": None}


@pytest.mark.parametrize(("name", "keeps_serving"), [("local", True), ("ray", True), ("k8s", False)])
def test_run_keeps_serving_only_where_the_winner_is_served_here(monkeypatch, name, keeps_serving):
    served: list[str] = []
    monkeypatch.setattr(local, "run_local", lambda wf, **_: {"deploy": {"outputs": {"url": "u"}}})
    monkeypatch.setattr("services.deploy.serve_until_stopped", served.append)
    address = "\n  address: http://127.0.0.1:8265" if name == "ray" else ""
    wf = loads(f"name: t\ncluster:\n  backend: {name}{address}\n")
    assert wf.deploy.keep_serving
    LocalRay().launch(wf, log=lambda _: None)
    assert served == (["t"] if keeps_serving else [])


def test_submit_without_an_address_is_a_user_error(tmp_path, capsys, monkeypatch):
    launched: list[str] = []
    monkeypatch.setattr(backends.RayJobs, "launch", lambda *a, **k: launched.append("ray"))
    path = tmp_path / "wf.yaml"
    path.write_text("name: t\n")
    assert cli.main(["submit", str(path)]) == 2
    assert "no cluster address: pass --address" in capsys.readouterr().err
    assert launched == []
    assert cli.main(["submit", "--address", "http://127.0.0.1:8265", str(path), "--no-follow"]) == 0
    assert launched == ["ray"]
