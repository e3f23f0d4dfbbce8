"""Turn a verified record into token ids with the shared chat template (one image token per image).

Ingest stores ONE `<image>` token per image; `mm1.data.packing` expands it to the candidate's number of image
tokens at training time, so one set of shards serves every connector and resolution of a sweep.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mm1.data.chat import Encoded, ImageSlot, encode_conversation, encode_document


def encode_record(tokenizer: PreTrainedTokenizerBase, source: str, doc: list) -> Encoded:
    """`doc` is an SFT turn list (source 'sft') or pre-training segments with None for each image."""
    if source == "sft":
        return encode_conversation(tokenizer, doc, image_tokens=1)
    parts = [ImageSlot() if s is None else s for s in doc]
    return encode_document(tokenizer, parts, image_tokens=1)


@lru_cache(maxsize=4)
def cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer saved with save_pretrained, loaded once per worker process."""
    return AutoTokenizer.from_pretrained(path)
