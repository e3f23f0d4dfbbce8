"""The workflow schema: broken files give one clear, located message; valid ones load typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mm1.cli import main
from mm1.config import ConfigError, load, loads, with_overrides

BROKEN = sorted((Path(__file__).parent / "workflows" / "broken").glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[1]


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <message fragment>'"
    return first.removeprefix("# expect: ")


def test_there_are_at_least_ten_broken_workflows():
    assert len(BROKEN) >= 10


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_workflow_gives_one_clear_error(path: Path, capsys):
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected_message(path) in err
    assert "Traceback" not in err
    assert err.count("\n") == 1, f"expected one line, got:\n{err}"


def test_validate_exits_2_without_traceback_in_a_real_process():
    path = BROKEN[0]
    proc = subprocess.run(
        [sys.executable, "-m", "mm1.cli", "validate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert expected_message(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_file_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 2
    assert f"{missing}: cannot read the workflow file" in capsys.readouterr().err
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["validate", str(binary)]) == 2
    assert "cannot read the workflow file" in capsys.readouterr().err


def test_quickstart_is_valid_and_typed():
    wf = load(ROOT / "workflows" / "quickstart.yaml")
    assert wf.name == "quickstart"
    assert isinstance(wf.pretrain.steps, int)
    assert wf.sweep == {}  # one candidate with both cores; the comparison is connector-ablation.yaml


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_workflow_validates(path, request, monkeypatch):
    if path.name == "from-pretrained.yaml":  # its model.vision / model.llm folders, as its header makes them
        pretrained = request.getfixturevalue("pretrained_dir")
        monkeypatch.chdir(pretrained.parent)
        (pretrained.parent / "models").symlink_to(pretrained, target_is_directory=True)
    wf = load(path)
    assert wf.name == path.stem


def test_the_connector_ablation_is_the_quickstart_with_a_sweep():
    ablation = load(ROOT / "workflows" / "connector-ablation.yaml")
    quickstart = load(ROOT / "workflows" / "quickstart.yaml")
    assert ablation.sweep["model.connector.type"] == ["avgpool", "attnpool", "c-abstractor"]
    assert ablation.sweep["model.connector.num_tokens"] == [16, 36]
    assert ablation.data == quickstart.data and ablation.sft.lr == quickstart.sft.lr
    assert ablation.model.overrides == quickstart.model.overrides
    assert ablation.model.preset == quickstart.model.preset


def test_command_line_overrides_are_typed_and_validated():
    wf = load(ROOT / "workflows" / "quickstart.yaml", ["pretrain.steps=7", "model.connector.type=attnpool"])
    assert wf.pretrain.steps == 7 and wf.model.connector.type == "attnpool"
    with pytest.raises(ConfigError) as info:
        load(ROOT / "workflows" / "quickstart.yaml", ["pretrain.steps=many"])
    assert "override 'pretrain.steps=many'" in str(info.value)
    assert "must be an integer" in str(info.value)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(ROOT / "workflows" / "quickstart.yaml", ["pretrain.steps"])


def test_defaults_follow_mm1():
    wf = loads("name: x\n")
    assert (wf.data.mixture.interleaved, wf.data.mixture.captions, wf.data.mixture.text) == (0.45, 0.45, 0.10)
    assert wf.pretrain.lr is None and wf.pretrain.weight_decay is None  # scaling law and 0.1 x lr
    assert wf.pretrain.min_lr_ratio == 0.1


def test_overrides_may_follow_options():
    from mm1.cli import parse

    args = parse(["run", "workflows/quickstart.yaml", "pretrain.steps=5", "--until", "ingest", "sft.steps=7"])
    assert args.until == "ingest"
    assert args.overrides == ["pretrain.steps=5", "sft.steps=7"]
    with pytest.raises(SystemExit):
        parse(["run", "workflows/quickstart.yaml", "--until", "ingest", "--nope"])
    with pytest.raises(SystemExit):
        parse(["status", "runs/quickstart", "pretrain.steps=5"])  # status takes no overrides


def test_with_overrides_returns_a_validated_copy():
    wf = loads("name: x\n")
    changed = with_overrides(wf, {"model.image_size": 32, "model.connector.type": "avgpool"})
    assert changed.model.image_size == 32 and wf.model.image_size is None  # None: the preset's own
    with pytest.raises(ConfigError, match="not a valid choice"):
        with_overrides(wf, {"model.connector.type": "mlp"})
