"""Tiny but real Hugging Face checkpoints, built offline on the fly (no downloads).

`build_pretrained(root)` writes, under `root`:
  siglip/   SiglipVisionModel + SiglipImageProcessor (mean = std = 0.5, 32 px, patch 8)
  clip/     CLIPVisionModel + CLIPImageProcessor (OpenAI CLIP's own constants, 32 px, patch 8)
  llama/    LlamaForCausalLM + a byte-level BPE trained here with `tokenizers`, saved through
            PreTrainedTokenizerFast with a Llama-3-style chat template (system role, <|eot_id|> ends a turn)
  qwen2/    Qwen2ForCausalLM + its own BPE with a ChatML template (a default system prompt, <|im_end|>);
            the embedding matrix has more rows than the tokenizer has tokens, as real Qwen2 checkpoints do
Each folder is what `from_pretrained` reads from a hub download, so `model.vision` / `model.llm` may point at
it. Tests take them through the session fixture `pretrained_dir` (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
PATCH = 8

TEXT = [
    "a red square above a blue circle",
    "what shape is in the picture? a green triangle",
    "the quick brown fox jumps over the lazy dog",
    "how many circles are there? two circles and one square",
    "You are a helpful assistant. Describe the image.",
] * 20

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(special: list[str], **tokens: str | None):
    """A byte-level BPE on TEXT with `special` first in the vocabulary, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **{k: v for k, v in tokens.items() if v})


def _llm(kind: str, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if kind == "llama":
        tok = train_tokenizer(LLAMA_SPECIAL, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
        tok.chat_template = LLAMA_TEMPLATE
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **_sizes(),
        )
        model_class = LlamaForCausalLM
    else:
        tok = train_tokenizer(QWEN2_SPECIAL, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        tok.chat_template = QWEN2_TEMPLATE
        # Qwen2 pads its embedding matrix past the tokenizer (151936 rows for 151646 tokens).
        config = Qwen2Config(
            vocab_size=len(tok) + 20,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **_sizes(),
        )
        model_class = Qwen2ForCausalLM
    torch.manual_seed(0)
    model_class(config).save_pretrained(out)
    tok.save_pretrained(out)


def _sizes() -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.3,  # far-from-uniform logits: greedy decoding gives varied tokens
    }


def _vision(kind: str, out: Path) -> None:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    sizes = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": PATCH,
        "image_size": IMAGE_SIZE,
    }
    torch.manual_seed(1)
    if kind == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**sizes)).save_pretrained(out)
        processor = SiglipImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    else:
        CLIPVisionModel(CLIPVisionConfig(**sizes)).save_pretrained(out)
        processor = CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
    processor.save_pretrained(out)


def build_pretrained(root: Path) -> Path:
    """Write the four checkpoints under `root` (see the module docstring); returns `root`."""
    root = Path(root)
    for kind in ("siglip", "clip"):
        _vision(kind, root / kind)
    for kind in ("llama", "qwen2"):
        _llm(kind, root / kind)
    return root


if (
    __name__ == "__main__"
):  # python tests/pretrained_fixtures.py FOLDER: what workflows/from-pretrained.yaml reads
    import sys

    print(build_pretrained(Path(sys.argv[1] if len(sys.argv) > 1 else "models")))
