"""What `mm1 validate` checks in the `model` section (and `data.tokenizer` against `model.llm`), torch-free.

The rules are MM1Config's own (mm1.model.configuration._check), applied before any Ray work to what the
workflow declares: the preset's configs, a local `model.vision` / `model.llm` folder's config.json (read as
JSON), and `model.overrides`. Each problem is (key, message); mm1.config_checks turns them into errors that
name the file and line. A hub name (org/name, not a local folder) cannot be read offline: only its form is
checked here, the rest when the model is built.

`feature_geometry` is the one home of "how many pixels does one feature cover" (mm1.model.vision uses it on
a built config): it reads plain dicts, so validation needs no transformers.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm1.registry import CONNECTORS, PRESETS

# MM1Config's own fields (tests/model/test_from_pretrained.py checks this list against the class), and the
# fields every Hugging Face config has: the names a top-level `model.overrides` key may take.
MM1_CONFIG_FIELDS = (
    "connector_type",
    "num_image_tokens",
    "connector_depth",
    "connector_hidden_size",
    "image_size",
    "image_grid",
    "image_layouts",
    "image_mean",
    "image_std",
    "image_token_id",
    "moe_num_experts",
    "moe_every",
    "moe_top_k",
    "moe_aux_loss_coef",
    "moe_z_loss_coef",
    "initializer_range",
    "tie_word_embeddings",
)
HF_CONFIG_FIELDS = (
    "architectures",
    "chunk_size_feed_forward",
    "dtype",
    "id2label",
    "is_encoder_decoder",
    "label2id",
    "output_hidden_states",
    "problem_type",
    "return_dict",
)
SUB_CONFIGS = ("vision_config", "text_config")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class FeatureGeometry:
    stride: int  # input pixels per side of one feature-grid cell
    channels: int  # width of one feature
    native_size: int | None  # resolution the position embeddings were built for; None: convolutional


def feature_geometry(vision: Mapping[str, Any]) -> FeatureGeometry:
    """From a vision config (a dict, or anything with .get) alone: ViT patches or a CNN's total stride."""
    kind = vision.get("model_type")
    if kind == "resnet":
        # The stem (stride-2 conv + stride-2 max-pool) divides by 4, every stage after the first by 2.
        first = 2 if vision.get("downsample_in_first_stage", False) else 1
        stride = 4 * first * 2 ** (len(vision["hidden_sizes"]) - 1)
        return FeatureGeometry(stride, vision["hidden_sizes"][-1], None)
    if kind in ("convnext", "convnextv2"):
        stride = vision.get("patch_size", 4) * 2 ** (vision.get("num_stages", 4) - 1)
        return FeatureGeometry(stride, vision["hidden_sizes"][-1], None)
    if vision.get("patch_size") is not None and vision.get("hidden_size") is not None:
        return FeatureGeometry(vision["patch_size"], vision["hidden_size"], vision.get("image_size"))
    raise ValueError(
        f"vision tower {kind!r} is neither a patch transformer (no patch_size/hidden_size in its config) nor "
        "one of the convolutional towers resnet, convnext, convnextv2"
    )


def local_checkpoint(value: str) -> Path | None:
    """The folder `value` names on this machine, or None for a hub name (org/name) not present here."""
    path = Path(value).expanduser()
    if path.exists() or not HUB_NAME.match(value):
        return path
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_problems(key: str, value: str, what: str) -> tuple[list[tuple[str, str]], dict | None]:
    """A local `model.vision` / `model.llm` must be a folder with a config.json; returns its config."""
    folder = local_checkpoint(value)
    if folder is None:
        return [], None
    hint = f"expected a local folder holding a Hugging Face {what} (config.json, weights), or a hub name (org/name)"
    if not folder.is_dir():
        return [(key, f"'{value}' does not exist: {hint}")], None
    config = _read_json(folder / "config.json")
    if config is None:
        return [(key, f"'{value}' has no readable config.json: {hint}")], None
    return [], config


def _close(name: str, options: set[str], cutoff: float = 0.85) -> str | None:
    found = difflib.get_close_matches(name, sorted(options), n=1, cutoff=cutoff)
    return found[0] if found else None


def _override_problems(
    overrides: Mapping[str, Any], configs: dict[str, dict]
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Unknown or misspelled override keys; returns the top-level overrides too (they change the geometry)."""
    problems: list[tuple[str, str]] = []
    top: dict[str, Any] = {}
    valid_top = set(MM1_CONFIG_FIELDS) | set(HF_CONFIG_FIELDS)
    for key, value in overrides.items():
        where = f"model.overrides.{key}"
        section, _, name = str(key).rpartition(".")
        if section == "":
            if name in SUB_CONFIGS:
                problems.append((where, f"set one field ({name}.FIELD), not the whole {name}"))
            elif name not in valid_top:
                close = _close(name, valid_top, cutoff=0.6)
                hint = f" Did you mean '{close}'?" if close else ""
                problems.append(
                    (
                        where,
                        f"MM1Config has no field '{name}'.{hint} Expected one of: {', '.join(MM1_CONFIG_FIELDS)} (or vision_config.FIELD / text_config.FIELD)",
                    )
                )
            else:
                top[name] = value
        elif section in SUB_CONFIGS:
            known = set(configs[section])
            close = _close(name, known) if name not in known else None
            if close:
                problems.append((where, f"{section} has no field '{name}'. Did you mean '{close}'?"))
            else:
                configs[section][name] = value
        else:
            problems.append(
                (
                    where,
                    f"the prefix must be vision_config., text_config. or none (an MM1Config field), got '{section}.'",
                )
            )
    return problems, top


def _tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    """The vocabulary of a saved fast tokenizer (tokenizer.json: model vocab + added tokens), or None."""
    saved = _read_json(folder / "tokenizer.json")
    if saved is None:
        return None
    vocab = dict(saved.get("model", {}).get("vocab", {}) or {})
    if not isinstance(vocab, dict):  # unigram models keep a list of [piece, score]
        return None
    vocab.update({t["content"]: t["id"] for t in saved.get("added_tokens", [])})
    return vocab


def model_problems(model: Any, tokenizer: str) -> list[tuple[str, str]]:
    """Everything wrong with `model` (a ModelConfig) and `tokenizer` (data.tokenizer) that is knowable
    without torch, as (key, message) pairs."""
    problems: list[tuple[str, str]] = []
    preset = PRESETS[model.preset]
    configs = {name: dict(preset[name]) for name in SUB_CONFIGS}
    source = {"vision_config": f"preset '{model.preset}'", "text_config": f"preset '{model.preset}'"}
    native = None
    for key, value, what, section in (
        ("model.vision", model.vision, "vision model", "vision_config"),
        ("model.llm", model.llm, "causal LM", "text_config"),
    ):
        if not value:
            continue
        found, config = _checkpoint_problems(key, value, what)
        problems += found
        if config is not None:
            config = config.get(section, config) if section == "vision_config" else config
            configs[section], source[section] = dict(config), f"{key} '{value}'"
            if section == "vision_config":
                native = config.get("image_size")
    override_problems, top = _override_problems(model.overrides or {}, configs)
    problems += override_problems

    try:
        geometry = feature_geometry(configs["vision_config"])
    except (KeyError, ValueError, TypeError) as exc:
        problems.append(("model.vision" if model.vision else "model.preset", str(exc)))
        geometry = None
    # A top-level override is applied after these keys (mm1.model.presets), so it is what the model gets.
    size = top.get("image_size", model.image_size)
    if size is None:
        size = native_image_size(model)
    k = top.get("num_image_tokens", model.connector.num_tokens)
    connector_type = top.get("connector_type", model.connector.type)
    where = {"size": "model.image_size", "grid": "model.image_grid", "tokens": "model.connector.num_tokens"}
    if size is not None:  # unknown only for a hub tower, read when the model is built
        problems += image_problems(
            where, size, top.get("image_grid", model.image_grid), k, connector_type, geometry, source, native
        )
    problems += _layout_problems(model.image_layouts)
    for name in ("moe_num_experts", "moe_every", "moe_top_k"):
        value = top.get(name, preset.get(name))
        if value is not None and (
            not isinstance(value, int) or value < (0 if name == "moe_num_experts" else 1)
        ):
            problems.append(
                (
                    f"model.overrides.{name}",
                    f"must be an integer >= {0 if name == 'moe_num_experts' else 1}, got {value!r}",
                )
            )
    problems += _tokenizer_problems(model.llm, tokenizer, configs["text_config"])
    return problems


def image_problems(
    where: Mapping[str, str],
    size: int,
    grid: int,
    k: int,
    connector_type: str,
    geometry: FeatureGeometry | None,
    source: Mapping[str, str] | None = None,
    native: int | None = None,
) -> list[tuple[str, str]]:
    """Resolution, splitting and connector tokens that cannot work together; `where` names the keys
    ({"size", "grid", "tokens"}: model.image_size or a stage's pretrain.image_size, ...)."""
    problems: list[tuple[str, str]] = []
    tower = (source or {}).get("vision_config", "the vision tower")
    if not isinstance(size, int) or size < 1:
        problems.append((where["size"], f"must be a positive number of pixels, got {size}"))
    elif geometry is not None and size % geometry.stride:
        fits = ", ".join(
            str(geometry.stride * n)
            for n in range(max(1, size // geometry.stride - 1), size // geometry.stride + 3)
        )
        problems.append(
            (
                where["size"],
                f"{size} is not a multiple of the vision tower's patch size (total stride) {geometry.stride} "
                f"from {tower}; e.g. one of {fits}"
                + (f" (its native resolution is {native})" if native else ""),
            )
        )
    if not isinstance(grid, int) or grid < 1:
        problems.append((where["grid"], f"must be at least 1 (1 = no image splitting), got {grid}"))
    connector = CONNECTORS.get(connector_type)
    if k < 1:
        problems.append((where["tokens"], f"must be at least 1, got {k}"))
    elif connector is not None and connector.square_tokens:
        root = math.isqrt(k)
        if root * root != k:
            near = ", ".join(str(n * n) for n in (max(1, root), root + 1))
            problems.append(
                (
                    where["tokens"],
                    f"the {connector_type} connector pools the patch grid to a square: {k} is not a "
                    f"perfect square (e.g. {near}); attnpool takes any count",
                )
            )
        elif (
            geometry is not None
            and isinstance(size, int)
            and size >= geometry.stride
            and root > size // geometry.stride
        ):
            side = size // geometry.stride
            problems.append(
                (
                    where["tokens"] if where["size"].startswith("model.") else where["size"],
                    f"{k} tokens need a {root}x{root} pool but the patch grid is only {side}x{side} "
                    f"(image_size {size} / patch {geometry.stride}); at most {side * side}",
                )
            )
    return problems


def _layout_problems(layouts: list[str]) -> list[tuple[str, str]]:
    """`model.image_layouts`: ROWSxCOLUMNS strings with a square number of crops (image_grid^2)."""
    problems = []
    for i, text in enumerate(layouts or []):
        rows, sep, cols = str(text).lower().partition("x")
        if not (sep and rows.isdigit() and cols.isdigit() and int(rows) and int(cols)):
            problems.append((f"model.image_layouts[{i}]", f"'{text}' is not ROWSxCOLUMNS, e.g. 2x2 or 1x4"))
        elif math.isqrt(int(rows) * int(cols)) ** 2 != int(rows) * int(cols):
            problems.append(
                (
                    f"model.image_layouts[{i}]",
                    f"{text} has {int(rows) * int(cols)} crops; a layout of image_grid g has g*g crops "
                    "(2: 1x4, 2x2, 4x1)",
                )
            )
    return problems


def native_image_size(model: Any) -> int | None:
    """The resolution a model section runs at when it names none: a `model.vision` tower's own (its
    image-processor config, else its config.json), else the preset's; None for a hub tower not on this
    machine (known once the model is built). As mm1.model.presets.mm1_config resolves it."""
    preset = PRESETS[model.preset]
    if not model.vision:
        return preset.get("image_size")
    folder = local_checkpoint(model.vision)
    if folder is None or not folder.is_dir():
        return None
    config = _read_json(folder / "config.json") or {}
    config = config.get("vision_config", config)
    processor = _read_json(folder / "preprocessor_config.json") or {}
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return size if isinstance(size, int) else config.get("image_size", preset.get("image_size"))


def vision_geometry(model: Any) -> FeatureGeometry | None:
    """The tower's feature geometry from the preset or a local `model.vision` config (with any
    vision_config.* overrides); None when unknown here (a hub name) or unreadable (model_problems says why)."""
    config = dict(PRESETS[model.preset]["vision_config"])
    if model.vision:
        folder = local_checkpoint(model.vision)
        found = _read_json(folder / "config.json") if folder is not None and folder.is_dir() else None
        if found is None:
            return None
        config = dict(found.get("vision_config", found))
    for key, value in (model.overrides or {}).items():
        section, _, name = str(key).rpartition(".")
        if section == "vision_config":
            config[name] = value
    try:
        return feature_geometry(config)
    except (KeyError, ValueError, TypeError):
        return None


def stage_image_problems(wf: Any) -> list[tuple[str, str]]:
    """Each enabled training stage's own resolution, splitting and sequence length (`pretrain.image_size`,
    ...) against the tower, the connector and the packed sequence; what a stage inherits from the model
    section is model_problems' to report."""
    from mm1.data.preprocess import crops_per_image, grid_layouts

    model, problems = wf.model, []
    top = top_level_overrides(model)
    geometry = vision_geometry(model)
    k = top.get("num_image_tokens") or model.connector.num_tokens
    connector_type = top.get("connector_type") or model.connector.type
    base_size = top.get("image_size") or model.image_size or native_image_size(model)
    for name in ("pretrain", "sft"):
        stage = getattr(wf, name)
        if not stage.enabled:
            continue
        grid = stage.image_grid or top.get("image_grid") or model.image_grid
        size = stage.image_size or base_size
        where = {
            "size": f"{name}.image_size" if stage.image_size else "model.image_size",
            "grid": f"{name}.image_grid" if stage.image_grid else "model.image_grid",
            "tokens": "model.connector.num_tokens",
        }
        if (stage.image_size is not None or stage.image_grid is not None) and size is not None:
            tower = f"model.vision '{model.vision}'" if model.vision else f"preset '{model.preset}'"
            problems += image_problems(
                where, size, grid, k, connector_type, geometry, {"vision_config": tower}
            )
        if isinstance(grid, int) and grid >= 1 and not _layout_problems(model.image_layouts):
            try:
                grid_layouts(grid, model.image_layouts)
            except ValueError as exc:
                problems.append(("model.image_layouts", f"{exc}, the grid of {name}"))
        seq_key = f"{name}.seq_len" if stage.seq_len is not None else "packing.seq_len"
        seq_len = stage.seq_len if stage.seq_len is not None else wf.packing.seq_len
        if stage.seq_len is not None and stage.seq_len < 32:
            problems.append((seq_key, f"must be at least 32, got {stage.seq_len}"))
        elif isinstance(grid, int) and grid >= 1 and isinstance(k, int) and k >= 1:
            per_image = k * crops_per_image(grid)
            if seq_len < per_image + 2:
                problems.append(
                    (
                        seq_key,
                        f"{seq_len} tokens cannot hold one image of {name} ({per_image} tokens: "
                        f"{crops_per_image(grid)} sub-image(s) x {k} connector tokens) plus <s> and a token of "
                        "text; raise it or lower the connector's tokens / the image grid",
                    )
                )
    return problems


def top_level_overrides(model: Any) -> dict[str, Any]:
    """`model.overrides` keys without a sub-config prefix: MM1Config fields, applied after every other
    model setting."""
    return {k: v for k, v in (model.overrides or {}).items() if "." not in str(k)}


def _tokenizer_problems(llm: str, tokenizer: str, text_config: dict) -> list[tuple[str, str]]:
    """With model.llm set, data.tokenizer (when it names another tokenizer) must have the LLM's vocabulary."""
    if not llm or not tokenizer or tokenizer == llm:
        return []
    llm_folder, tok_folder = local_checkpoint(llm), local_checkpoint(tokenizer)
    if tok_folder is not None and not tok_folder.is_dir():
        return [("data.tokenizer", f"'{tokenizer}' does not exist: expected a folder with a saved tokenizer")]
    if llm_folder is None or tok_folder is None or not llm_folder.is_dir():
        return []  # a hub name: checked when the model is built
    theirs, ours = _tokenizer_vocab(llm_folder), _tokenizer_vocab(tok_folder)
    if theirs is not None and ours is not None:
        wrong = [t for t, i in theirs.items() if ours.get(t) != i]
        if wrong:
            return [
                (
                    "data.tokenizer",
                    f"'{tokenizer}' does not match the vocabulary of model.llm '{llm}': {len(wrong)} of its "
                    f"{len(theirs)} tokens are missing or have other ids (e.g. {wrong[:3]}); leave data.tokenizer "
                    "empty to use the LLM's own tokenizer",
                )
            ]
        return []
    rows = text_config.get("vocab_size")
    if ours is not None and rows is not None and len(ours) > rows + 16:
        return [
            (
                "data.tokenizer",
                f"'{tokenizer}' has {len(ours)} tokens but model.llm '{llm}' has {rows} embedding rows: "
                "leave data.tokenizer empty to use the LLM's own tokenizer",
            )
        ]
    return []
