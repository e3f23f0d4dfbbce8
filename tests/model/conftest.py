"""Tiny random-init MM1 models and a BPE tokenizer trained on the fly: no downloads, CPU, fp32."""

from __future__ import annotations

import pytest
from model_helpers import CORPUS, make_model

from mm1.data.tokenizer import train_bpe_tokenizer
from mm1.model import MM1Processor


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture
def model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture
def processor(tokenizer, model):
    return MM1Processor.from_config(model.config, tokenizer)
