from __future__ import annotations

import pytest
import torch

from mm1.model import MM1Config, build_connector

VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "patch_size": 8,
    "image_size": 64,
}
TEXT = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 48,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
}


def _config(connector_type: str, k: int) -> MM1Config:
    return MM1Config(
        vision_config=VISION,
        text_config=TEXT,
        connector_type=connector_type,
        num_image_tokens=k,
        image_size=64,
        connector_depth=1,
    )


@pytest.mark.parametrize("connector_type", ["avgpool", "attnpool", "c-abstractor"])
@pytest.mark.parametrize("k", [4, 16])
def test_connector_emits_k_tokens_at_llm_width(connector_type, k):
    connector = build_connector(_config(connector_type, k))
    features = torch.randn(3, 64, 32, requires_grad=True)  # 3 images, 8x8 patches, vision width 32
    tokens = connector(features)
    assert tokens.shape == (3, k, 48)
    tokens.sum().backward()
    assert features.grad.abs().sum() > 0


def test_avgpool_tokens_pool_their_own_region():
    """Token i of avgpool is the mean of its patch region: changing the top-left patches moves token 0 only."""
    connector = build_connector(_config("avgpool", 4)).eval()
    features = torch.randn(1, 64, 32)
    changed = features.clone().reshape(1, 8, 8, 32)
    changed[:, :2, :2] += 5.0
    with torch.no_grad():
        delta = (connector(changed.reshape(1, 64, 32)) - connector(features)).abs().sum(-1)[0]
    assert delta[0] > 0 and torch.all(delta[1:] == 0)


def test_square_connectors_reject_non_square_token_counts():
    with pytest.raises(ValueError, match="square num_image_tokens, got 12"):
        _config("avgpool", 12)
    assert build_connector(_config("attnpool", 12))(torch.randn(1, 64, 32)).shape == (1, 12, 48)
