"""Tokenizers: a Hugging Face tokenizer by name or path, or a byte-level BPE trained on our own corpus."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mm1.data import chat
from mm1.data.chat import ASSISTANT, BOS, END, EOS, IMAGE, PAD, SPECIAL_TOKENS, USER


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`, with our special tokens registered (ids 0..len(SPECIAL)-1)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return wrap_tokenizer(bpe)


def wrap_tokenizer(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    extra = [t for t in SPECIAL_TOKENS if t not in (PAD, BOS, EOS)]
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, bos_token=BOS, eos_token=EOS, extra_special_tokens=extra
    )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load any Hugging Face tokenizer (an LLM's, by name or path) and add what MM1 needs, once:

    - `<image>`, the image placeholder, always;
    - our chat tokens (<|user|>, <|assistant|>, <|end|>) only when it has no chat template of its own (then
      mm1.data.chat's template is used; with one, its own template is);
    - an eos token (</s>) only when it has none, and a pad token (its eos) when it has none.
    Its bos/eos stay its own. Tokens already present are not added again, so loading a tokenizer we saved
    adds nothing. The LLM's embeddings are resized to match by mm1.model.presets.build_mm1, explicitly."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    wanted = [IMAGE] if chat.has_own_template(tokenizer) else [IMAGE, USER, ASSISTANT, END]
    if tokenizer.eos_token is None:
        wanted.append(EOS)
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
