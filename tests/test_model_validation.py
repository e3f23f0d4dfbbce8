"""`mm1 validate` catches model-section mistakes before any Ray work (mm1.model_checks), torch-free."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from mm1.config import ConfigError, loads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("model.image_size=60", "model.image_size", "not a multiple of the vision tower's patch size"),
        ("model.connector.num_tokens=15", "model.connector.num_tokens", "not a perfect square"),
        ("model.connector.num_tokens=100", "model.connector.num_tokens", "patch grid is only 8x8"),
        (
            "model.overrides={text_config.num_hiden_layers: 2}",
            "model.overrides.text_config.num_hiden_layers",
            "Did you mean 'num_hidden_layers'",
        ),
        (
            "model.overrides={conector_type: avgpool}",
            "model.overrides.conector_type",
            "no field 'conector_type'",
        ),
        ("model.overrides={llm_config.x: 1}", "model.overrides.llm_config.x", "the prefix must be"),
        ("model.llm=./no/such/llm", "model.llm", "does not exist"),
        ("model.vision=/no/such/tower", "model.vision", "does not exist"),
    ],
)
def test_a_model_mistake_names_the_file_the_key_and_what_was_expected(override, key, expected):
    with pytest.raises(ConfigError) as caught:
        loads("name: wf\n", "wf.yaml", [override])
    assert caught.value.key == key and expected in caught.value.message
    assert str(caught.value).startswith("wf.yaml")


def test_a_mistake_in_the_file_names_its_line():
    text = "name: wf\nmodel:\n  image_size: 60\n"
    with pytest.raises(ConfigError) as caught:
        loads(text, "wf.yaml")
    assert str(caught.value).startswith("wf.yaml:3: model.image_size:")


def test_attnpool_takes_any_token_count_and_hub_names_are_left_to_build_time():
    loads("name: wf\n", overrides=["model.connector.type=attnpool", "model.connector.num_tokens=15"])
    wf = loads("name: wf\n", overrides=["model.llm=Qwen/Qwen2.5-0.5B-Instruct"])
    assert wf.data.tokenizer == "Qwen/Qwen2.5-0.5B-Instruct"  # the LLM's tokenizer unless data.tokenizer says


def test_local_checkpoints_are_read_for_their_geometry_and_vocabulary(pretrained_dir):
    siglip, llama, qwen2 = (str(pretrained_dir / k) for k in ("siglip", "llama", "qwen2"))
    wf = loads(
        "name: wf\n", overrides=[f"model.vision={siglip}", f"model.llm={qwen2}", "model.image_size=32"]
    )
    assert wf.data.tokenizer == qwen2
    with pytest.raises(ConfigError, match="native resolution is 32"):
        loads("name: wf\n", overrides=[f"model.vision={siglip}", "model.image_size=36"])
    with pytest.raises(ConfigError) as caught:
        loads(
            "name: wf\n", "wf.yaml", [f"model.llm={qwen2}", f"data.tokenizer={llama}", "model.image_size=32"]
        )
    assert caught.value.key == "data.tokenizer" and "does not match the vocabulary" in caught.value.message
    with pytest.raises(ConfigError, match="no readable config.json"):
        loads("name: wf\n", overrides=[f"model.llm={pretrained_dir}"])


def test_validate_reads_local_checkpoints_without_torch_and_exits_2(pretrained_dir, tmp_path):
    qwen2 = pretrained_dir / "qwen2"
    good = tmp_path / "good.yaml"
    good.write_text(
        f"name: good\nmodel:\n  vision: {pretrained_dir / 'clip'}\n  llm: {qwen2}\n  image_size: 32\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\nmodel:\n  vision: {pretrained_dir / 'clip'}\n  image_size: 30\n")
    code = (
        "import sys; from mm1.cli import main; "
        f"assert main(['validate', {str(good)!r}]) == 0; "
        f"assert main(['validate', {str(bad)!r}]) == 2; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "bad.yaml:4: model.image_size: 30 is not a multiple" in result.stdout + result.stderr


def test_the_override_field_list_is_mm1configs():
    from transformers import PretrainedConfig

    from mm1.model.configuration import MM1Config
    from mm1.model_checks import HF_CONFIG_FIELDS, MM1_CONFIG_FIELDS

    own = {f.name for f in dataclasses.fields(MM1Config)} - {
        "vision_config",
        "text_config",
        "transformers_version",
    }
    base = {f.name for f in dataclasses.fields(PretrainedConfig)} - {"transformers_version"}
    assert set(MM1_CONFIG_FIELDS) == own - base and set(HF_CONFIG_FIELDS) == base
