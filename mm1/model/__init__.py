"""MM1 model: image encoder -> vision-language connector -> decoder LLM (dense or MoE), as a HF PreTrainedModel.

Importing this package registers the "mm1" model type with AutoConfig, AutoModelForImageTextToText and
AutoModelForCausalLM, so `from_pretrained` works on saved checkpoints through the Auto classes too.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from mm1.model.configuration import CONNECTOR_TYPES, MM1Config
from mm1.model.connectors import build_connector
from mm1.model.decoding import generate_answers
from mm1.model.freeze import PARTS, apply_freeze, train_mode
from mm1.model.info import format_model_info, model_info
from mm1.model.loading import load_for_inference, load_processor, save_for_inference
from mm1.model.modeling import MM1CausalLMOutput, MM1ForConditionalGeneration, upcycle_to_moe
from mm1.model.presets import PRESETS, build_mm1, mm1_config
from mm1.model.processing import MM1Processor
from mm1.model.remote_code import export_remote_code

# Here, not in modeling.py: that file is also exported as remote code, where registering would be wrong.
AutoConfig.register("mm1", MM1Config, exist_ok=True)
AutoModelForImageTextToText.register(MM1Config, MM1ForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(MM1Config, MM1ForConditionalGeneration, exist_ok=True)

__all__ = [
    "CONNECTOR_TYPES",
    "PARTS",
    "PRESETS",
    "MM1CausalLMOutput",
    "MM1Config",
    "MM1ForConditionalGeneration",
    "MM1Processor",
    "apply_freeze",
    "build_connector",
    "build_mm1",
    "export_remote_code",
    "format_model_info",
    "generate_answers",
    "load_for_inference",
    "load_processor",
    "mm1_config",
    "model_info",
    "save_for_inference",
    "train_mode",
    "upcycle_to_moe",
]
