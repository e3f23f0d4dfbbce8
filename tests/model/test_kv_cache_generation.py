"""generate(): KV cache, batching with left padding, and loading a checkpoint in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from model_helpers import random_image

from mm1.data.chat import IMAGE
from mm1.model import generate_answers, load_for_inference, save_for_inference


def test_greedy_with_and_without_kv_cache_is_identical(model, processor):
    enc = processor.encode_chat(
        [{"role": "user", "content": f"{IMAGE}\nwhat shape is in the picture?"}], [random_image(0)]
    )
    kwargs = {"max_new_tokens": 16, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    cached = model.generate(**enc, use_cache=True, **kwargs)
    uncached = model.generate(**enc, use_cache=False, **kwargs)
    new = cached[0, enc["input_ids"].shape[1] :]
    assert len(new) == 16 and len(set(new.tolist())) > 3  # varied tokens, so equality is not trivial
    assert torch.equal(cached, uncached)


def test_batched_answers_match_one_at_a_time(model, processor):
    chats = [
        ([{"role": "user", "content": f"{IMAGE}\nwhat is this?"}], [random_image(1)]),
        ([{"role": "user", "content": "how many circles are there? a long text-only question"}], []),
        ([{"role": "user", "content": f"{IMAGE} and {IMAGE}: compare"}], [random_image(2), random_image(3)]),
    ]
    batched = generate_answers(model, processor, chats, max_new_tokens=8)
    single = [generate_answers(model, processor, [c], max_new_tokens=8)[0] for c in chats]
    assert batched == single
    assert len(set(batched)) == 3


def test_answers_stop_at_end_of_turn(model, processor):
    """Make <|end|> win at the 4th generated token: the answer is then exactly the first three tokens."""
    chats = [([{"role": "user", "content": "what shape is in the picture?"}], [])]
    enc = processor.encode_chat(*chats[0])
    raw = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)[
        0, enc["input_ids"].shape[1] :
    ]
    end_id = processor.stop_token_ids()[0]
    assert end_id not in raw[:4].tolist()
    calls = []

    def end_turn_at_fourth_token(module, args, logits):
        calls.append(1)
        if len(calls) == 4:  # prefill produces token 1, then one call per token
            logits[..., end_id] = 1e4
        return logits

    handle = model.language_model.lm_head.register_forward_hook(end_turn_at_fourth_token)
    try:
        answer = generate_answers(model, processor, chats, max_new_tokens=6)[0]
    finally:
        handle.remove()
    assert answer == processor.decode(raw[:3]).strip()
    assert answer != processor.decode(raw).strip()


def test_saved_checkpoint_answers_in_a_fresh_process(model, processor, tmp_path):
    save_for_inference(model, processor, tmp_path)
    loaded, loaded_processor = load_for_inference(tmp_path)
    chat = [([{"role": "user", "content": f"{IMAGE}\nwhat is this?"}], [random_image(5)])]
    expected = generate_answers(model, processor, chat, max_new_tokens=8)
    assert generate_answers(loaded, loaded_processor, chat, max_new_tokens=8) == expected

    image_path = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(random_image(5)).save(image_path)
    script = textwrap.dedent(
        f"""
        import json, sys
        import transformers
        import mm1.model  # registers the "mm1" model type with the Auto classes
        from mm1.model import MM1Processor
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}).eval()
        processor = MM1Processor.from_pretrained({str(tmp_path)!r})
        enc = processor.encode_chat([{{"role": "user", "content": "<image>\\nwhat is this?"}}], [{str(image_path)!r}])
        # No stop or pad ids passed: the saved generation_config.json supplies them.
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        json.dump({{"class": type(model).__name__, "tokens": new,
                   "eos": model.generation_config.eos_token_id}}, sys.stdout)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["class"] == "MM1ForConditionalGeneration"
    stops = processor.stop_token_ids()
    assert reply["eos"] == stops
    tokens = reply["tokens"]
    tokens = tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]
    assert processor.decode(tokens).strip() == expected[0] and tokens
