"""The image and sequence settings each training stage runs at, resolved from the workflow in one place.

A stage may set its own `image_size`, `image_grid` and `seq_len` (MM1 pre-trains at 378 px and fine-tunes
at high resolution with sub-image splitting); what it leaves unset comes from the model section
(`model.image_size`, itself defaulting to the vision tower's own resolution) and `packing.seq_len`. The
driver packs the stage's data with these settings (mm1.workflow.steps), the workers switch the model to them
(MM1ForConditionalGeneration.set_image_settings), and the stage's checkpoints record them, so evaluation and
serving of a checkpoint split and resize images exactly as its last stage trained on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mm1.data.preprocess import Layout, crops_per_image, grid_layouts, image_tokens_per_image
from mm1.model_checks import native_image_size, top_level_overrides


@dataclass(frozen=True)
class StageImages:
    size: int  # pixels per side of every (sub-)image the tower sees
    grid: int  # image splitting: grid x grid crops + overview; 1 = off
    layouts: tuple[Layout, ...]  # crop layouts (rows, columns) chosen from by aspect ratio
    tokens_per_crop: int  # the connector's tokens per (sub-)image
    seq_len: int  # packed sequence length
    max_images: int  # images per packed sequence

    @property
    def crops(self) -> int:
        return crops_per_image(self.grid)

    @property
    def tokens_per_image(self) -> int:
        return image_tokens_per_image(self.tokens_per_crop, self.grid)

    def model_settings(self) -> dict[str, Any]:
        """Keyword arguments of MM1ForConditionalGeneration.set_image_settings."""
        layouts = [list(layout) for layout in self.layouts] if self.grid > 1 else None
        return {"image_size": self.size, "image_grid": self.grid, "image_layouts": layouts}


def model_image_size(model: Any) -> int:
    """The resolution the model section declares: an `image_size` override, model.image_size, or the
    tower's / preset's own (a hub tower's is read from its config, a download on a machine with network)."""
    size = top_level_overrides(model).get("image_size") or model.image_size or native_image_size(model)
    if size is None:
        from mm1.model.presets import mm1_config

        size = mm1_config(model.preset, vision=model.vision or None).image_size
    return int(size)


def stage_images(wf: Any, stage_name: str) -> StageImages:
    """The settings `stage_name` ("pretrain" or "sft") of workflow `wf` trains at."""
    stage, model = getattr(wf, stage_name), wf.model
    top = top_level_overrides(model)
    grid = stage.image_grid or top.get("image_grid") or model.image_grid
    return StageImages(
        size=stage.image_size or model_image_size(model),
        grid=grid,
        layouts=grid_layouts(grid, model.image_layouts),
        tokens_per_crop=top.get("num_image_tokens") or model.connector.num_tokens,
        seq_len=stage.seq_len or wf.packing.seq_len,
        max_images=wf.packing.max_images,
    )
