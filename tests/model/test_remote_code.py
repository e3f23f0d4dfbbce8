"""A saved checkpoint loads in plain transformers (trust_remote_code=True) where `import mm1` fails, and
answers exactly as our own loader and decoder do."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from model_helpers import random_image
from PIL import Image

from mm1.data.chat import IMAGE
from mm1.model import generate_answers, load_for_inference, save_for_inference
from mm1.model.remote_code import export_remote_code, remote_code_files

PROMPT = [{"role": "user", "content": f"{IMAGE}\nwhat is this?"}]

# Runs with `python -I` in an empty folder, with every import of mm1 refused (the editable install's finder
# would otherwise find it): only transformers and the files in the checkpoint folder are available.
CHILD = """
import importlib.abc, json, sys

class NoMM1(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mm1" or name.startswith("mm1."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, NoMM1())
try:
    import mm1  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("mm1 is importable")

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

folder, image, out = sys.argv[1:4]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
enc = processor.encode_chat([{"role": "user", "content": "<image>\\nwhat is this?"}], [image])
with torch.no_grad():
    logits = model(**enc).logits[0, -1]
    generated = model.generate(**enc, max_new_tokens=8, do_sample=False)
json.dump({
    "config_class": type(config).__module__ + "." + type(config).__name__,
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "processor_class": type(processor).__module__ + "." + type(processor).__name__,
    "tokenizer_vocab": len(tokenizer),
    "input_ids": enc["input_ids"][0].tolist(),
    "pixel_values": enc["pixel_values"].flatten().tolist(),
    "logits": logits.tolist(),
    "tokens": generated[0, enc["input_ids"].shape[1]:].tolist(),
    "mm1_modules": sorted(m for m in sys.modules if m == "mm1" or m.startswith("mm1.")),
}, open(out, "w"))
"""


@pytest.fixture
def saved(model, processor, tmp_path):
    folder = tmp_path / "checkpoint"
    save_for_inference(model, processor, folder)
    return folder


def test_exported_code_is_self_contained(saved):
    files = remote_code_files()
    assert {"configuration.py", "modeling.py", "processing.py"} <= set(files)
    for name in files:
        for node in ast.walk(ast.parse((saved / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or not node.module.startswith("mm1"), (name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "mm1" for a in node.names), name
    config = json.loads((saved / "config.json").read_text())
    for target in config["auto_map"].values():
        assert f"{target.split('.')[0]}.py" in files
    processor_config = json.loads((saved / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing.MM1Processor"}


def test_export_is_deterministic_and_adds_only_code(model, processor, saved, tmp_path):
    again = tmp_path / "again"
    save_for_inference(model, processor, again)
    code = set(remote_code_files())
    for name in code:
        assert (saved / name).read_bytes() == (again / name).read_bytes(), name
    export_remote_code(again)  # exporting twice changes nothing either
    for name in code:
        assert (saved / name).read_bytes() == (again / name).read_bytes(), name

    plain = tmp_path / "plain"  # the same save without the code
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    with_code = {p.name: p.stat().st_size for p in saved.iterdir()}
    without = {p.name: p.stat().st_size for p in plain.iterdir()}
    assert set(with_code) - set(without) == code
    assert {name: with_code[name] for name in without} == without
    added = sum(with_code[name] for name in code)
    assert sum(with_code.values()) - sum(without.values()) == added < 200_000


def test_plain_transformers_loads_and_answers_like_ours(saved, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(random_image(5)).save(image)
    ours, our_processor = load_for_inference(saved)
    enc = our_processor.encode_chat(PROMPT, [str(image)])
    with torch.no_grad():
        our_logits = ours(**enc).logits[0, -1]
    expected = generate_answers(ours, our_processor, [(PROMPT, [str(image)])], max_new_tokens=8)

    work = tmp_path / "empty"
    work.mkdir()
    out = tmp_path / "reply.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    env |= {"HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(CHILD), str(saved), str(image), str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(out.read_text())

    assert reply["mm1_modules"] == []
    for key in ("config_class", "model_class", "processor_class"):
        assert reply[key].startswith("transformers_modules."), reply[key]
    assert reply["model_class"].endswith(".modeling.MM1ForConditionalGeneration")
    assert reply["tokenizer_vocab"] == len(our_processor.tokenizer)
    assert reply["input_ids"] == enc["input_ids"][0].tolist()
    assert torch.equal(torch.tensor(reply["pixel_values"]), enc["pixel_values"].flatten())
    torch.testing.assert_close(torch.tensor(reply["logits"]), our_logits, rtol=1e-5, atol=1e-5)

    # HF generate's greedy tokens up to the first stop token are our decoder's answer.
    stops = our_processor.stop_token_ids()
    tokens = reply["tokens"]
    tokens = tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]
    assert tokens and our_processor.decode(tokens).strip() == expected[0]
