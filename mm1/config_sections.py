"""The workflow's sections, one typed dataclass each (OmegaConf structured configs), and `Workflow` itself.

Every key a workflow file may set is here or in the modules these sections come from (mm1.config_cluster for
`storage` and `cluster`, mm1.config_serving for `deploy`), with one comment per field. Names a key picks from
a registry (presets, connectors, freezable parts, benchmarks) are checked against mm1.registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mm1.config_cluster import ClusterConfig, StorageConfig
from mm1.config_serving import DeployConfig
from mm1.config_validate import choice
from mm1.registry import CONNECTORS, PRESETS


@dataclass
class ShapesConfig:
    # Generated when no corpora are named: scenes per corpus, and the seed (eval uses a disjoint seed).
    caption_samples: int = 2000
    interleaved_docs: int = 600
    text_samples: int = 800
    sft_samples: int = 2000
    # Question/answer turns per SFT conversation, drawn uniformly in [min, max] (a scene has 5 to 7 questions,
    # caption included): more turns per image train more answers per token of image features.
    sft_min_turns: int = 1
    sft_max_turns: int = 3
    # Where the turns come from: "per-type" = one question of each type that applies (5 to 7, caption
    # included); "every" = every question the table allows (each unique shape's colour, each unique colour's
    # shape, count and existence of each present kind and as many absent ones: up to 26 for four objects).
    # Measured on the Shapes study's data (2026-11-25), "every" with 6-12 turns was not better at equal steps
    # (mean of colour_of/shape_of/exists/count_all after 600 SFT steps: 0.577 vs 0.637 for per-type, 4-7).
    sft_questions: str = choice("per-type", "per-type", "every")
    # Relative weight of each question type when the turns are drawn from that pool (types not named weigh
    # 1; 0 leaves a type out): the "every" pool holds about four count_kind/exists questions per colour_of
    # one, so weighting colour_of evens out what SFT practises.
    sft_type_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0


@dataclass
class CorporaConfig:
    # Paths or globs (local or pyarrow URIs). Empty everywhere = generate the Shapes corpus.
    interleaved: list[str] = field(default_factory=list)  # OBELICS-style parquet
    captions: list[str] = field(default_factory=list)  # webdataset .tar shards
    text: list[str] = field(default_factory=list)  # JSON lines or parquet with a `text` column
    sft: list[str] = field(default_factory=list)  # LLaVA JSON
    # Folder that LLaVA `image` paths are relative to (default: the JSON file's folder).
    sft_image_root: str = ""


@dataclass
class MixtureConfig:
    interleaved: float = 0.45
    captions: float = 0.45
    text: float = 0.10


@dataclass
class DataConfig:
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    corpora: CorporaConfig = field(default_factory=CorporaConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    # A Hugging Face tokenizer name or path; empty = model.llm's own tokenizer (and chat template) when
    # model.llm is set, else a byte-level BPE trained on the corpus text. With model.llm, a tokenizer whose
    # vocabulary differs from the LLM's is a validation error.
    tokenizer: str = ""
    # Size of the trained BPE (unused when a tokenizer is named or model.llm is set).
    vocab_size: int = 512
    # The ingest step fails when more than this fraction of records is corrupt.
    max_bad_fraction: float = 0.05
    # Download http(s) image entries of interleaved documents (off: they are counted and skipped).
    download_images: bool = False
    seed: int = 0


@dataclass
class PackingConfig:
    """How the training stages pack ingest's samples into rows (read by pretrain and SFT, not by ingest)."""

    # Packed sequence length and the most images one packed sequence may hold.
    seq_len: int = 256
    max_images: int = 4
    # Keep a stage's packed rows in Ray's object store after packing them once, so training passes do not
    # re-read, re-pack and re-decode beside the trainer (3% more steps/s measured on 2 CPUs). auto: when
    # the estimated rows fit in a quarter of the object store (shared by the candidates training at once).
    # How rows are held, not what they are: it enters no fingerprint.
    materialize: str = choice("auto", "auto", "always", "never")


@dataclass
class ConnectorConfig:
    # A name in mm1.registry.CONNECTORS (MM1's finding: the type matters little, num_tokens much more).
    type: str = choice("c-abstractor", *CONNECTORS)
    num_tokens: int = 16


@dataclass
class ModelConfig:
    # A model size from mm1.registry.PRESETS (`mm1 model-info all` lists them with their sizes).
    preset: str = choice("tiny", *PRESETS)
    # Encoder input resolution in pixels, a multiple of the tower's patch size; null = the tower's own (its
    # image-processor config, with model.vision) or the preset's (64 for tiny). Another size interpolates a
    # ViT's position embeddings. pretrain.image_size / sft.image_size override it for one stage.
    image_size: int | None = None
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    # Image splitting: grid x grid crops + an overview (1 = off); a stage's image_grid overrides it.
    image_grid: int = 1
    # Crop layouts ROWSxCOLUMNS a split chooses from by each image's aspect ratio, every one with grid^2
    # crops (so an image's token count never depends on its shape); empty = all up to 4:1 (grid 2: 1x4,
    # 2x2, 4x1). [2x2] keeps the square grid alone.
    image_layouts: list[str] = field(default_factory=list)
    # Hugging Face vision tower / causal LM by hub name (org/name, downloaded on first use) or local folder;
    # empty = built from the preset with random weights. The tower's image-processor config gives the pixel
    # mean/std (train, eval and serving alike); the LLM gives the tokenizer and chat template (data.tokenizer).
    vision: str = ""
    llm: str = ""
    # Dotted overrides into the preset (e.g. {"text_config.num_hidden_layers": 2}).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraConfig:
    """LoRA adapters (peft) for a training stage (mm1.model.lora): the parts in `parts` train only through
    low-rank adapters on their Linear layers named in `target_modules`; `freeze` still freezes whole parts and
    the other parts train in full. Checkpoints hold the adapters for resuming and the merged model for
    evaluation and serving."""

    # Rank of the adapters; 0 = off (the stage trains its unfrozen parts' weights in full).
    r: int = 0
    # The adapters' output is scaled by alpha / r (peft's lora_alpha).
    alpha: float = 16.0
    # Dropout on the adapters' input while training.
    dropout: float = 0.0
    # Linear layers to adapt, by the end of their module name (q_proj, or self_attn.q_proj), inside `parts`.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # The model parts whose layers get adapters (names in mm1.registry.FREEZABLE_PARTS); their own weights
    # are frozen, so they must not be listed in the stage's `freeze`.
    parts: list[str] = field(default_factory=lambda: ["llm"])


@dataclass
class TrainConfig:
    enabled: bool = True
    steps: int = 200
    # Sequences per optimizer step, summed over workers and accumulation.
    batch_size: int = 16
    grad_accum: int = 1
    # Peak LR; null = MM1's scaling law over non-embedding parameters.
    lr: float | None = None
    # Weight decay; null = 0.1 * lr (MM1).
    weight_decay: float | None = None
    warmup_steps: int = 20
    # Cosine decay ends at this fraction of the peak.
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # Parts not trained in this stage: names in mm1.registry.FREEZABLE_PARTS.
    freeze: list[str] = field(default_factory=list)
    # LoRA adapters instead of full weights for some parts (r = 0: off).
    lora: LoraConfig = field(default_factory=LoraConfig)
    # This stage's resolution, image splitting and packed sequence length (MM1: 378 px pre-training, then
    # high-resolution SFT with sub-images); null = model.image_size, model.image_grid, packing.seq_len. A
    # checkpoint records its stage's settings, so evaluation and serving use the last stage's.
    image_size: int | None = None
    image_grid: int | None = None
    seq_len: int | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    num_workers: int = 1
    cpus_per_worker: float = 1
    # How Ray places the workers: PACK fills a node first, SPREAD puts them on different nodes.
    placement_strategy: str = choice("PACK", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    use_gpu: bool = False
    strategy: str = choice("ddp", "ddp", "fsdp")
    # bf16 autocast is for GPUs; on CPU keep fp32 (bf16 is emulated there, ~400x slower).
    precision: str = choice("fp32", "fp32", "bf16")
    # Activations recomputed in backward instead of kept, per transformer block (vision tower and LLM): none;
    # selective = torchtitan's layer-selective AC with k = 2, every 2nd block of each tower (about half the
    # activation memory of none for ~1/6 more compute); full = every block (only block inputs kept, ~1/3 more
    # compute). Was a bool: true is now full.
    activation_checkpointing: str = choice(
        "none", "none", "selective", "full", hint="true/false was the old spelling: true is now full"
    )
    # torch.compile each transformer block (vision tower and LLM), applied after checkpointing and before FSDP
    # as torchtitan does. The first steps pay the compilation (and one more per new image count in a batch).
    compile: bool = False
    # strategy fsdp only: FSDP2's CPUOffloadPolicy keeps the sharded parameters, gradients and optimizer state
    # in host memory and steps the optimizer on the CPU; for models whose states do not fit the GPUs.
    cpu_offload: bool = False
    # Worker failures tolerated by Ray Train before the fit fails.
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    # Packed rows each worker holds to shuffle its stream, reshuffled every pass (seed + pass): without it
    # every epoch replays the same batches in the same order. Memory: rows x (ids + images) per worker.
    # 0 = the dataset's fixed order.
    shuffle_buffer: int = 1024


@dataclass
class EvaluateConfig:
    enabled: bool = True
    # Names in mm1.registry.BENCHMARKS, evaluated in this order.
    benchmarks: list[str] = field(default_factory=lambda: ["shapes-vqa", "shapes-caption"])
    # Held-out Shapes scenes (a seed never used for training) and questions drawn from them.
    num_scenes: int = 200
    num_questions: int = 500
    # k values of the k-shot benchmarks (shapes-kshot, shapes-vqa-kshot, coco-caption-kshot, vqav2-kshot).
    kshot: list[int] = field(default_factory=lambda: [0, 4, 8])
    # k-shot demonstration pool: this many held-out Shapes scenes (at least 4 x max k), or this many images
    # held out of each COCO / VQAv2 file (drawn with `seed`; their items are demonstrations, never queries).
    kshot_pool: int = 64
    seed: int = 1_000_003
    batch_size: int = 32
    max_new_tokens: int = 24
    num_actors: int = 1
    # Which checkpoints of each candidate to evaluate.
    checkpoints: str = choice("last", "last", "all")
    # Real benchmark files, when a workflow points at them.
    coco_annotations: str = ""
    coco_images: str = ""
    vqav2_questions: str = ""
    vqav2_annotations: str = ""
    vqav2_images: str = ""


@dataclass
class SelectConfig:
    metric: str = "shapes-vqa/overall"
    mode: str = choice("max", "max", "min")


@dataclass
class ReportConfig:
    enabled: bool = True


@dataclass
class Workflow:
    # Names the run folder, the Ray job and the served model.
    name: str = MISSING
    description: str = ""
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=1e-3, freeze=[]))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Grid of candidates: dotted key -> list of values (e.g. {"model.connector.type": [avgpool, c-abstractor]}).
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The LLM's tokenizer unless data.tokenizer names one: ingest, a function of the data section, then
        # reads it there (and its fingerprint changes with it).
        if self.model.llm and not self.data.tokenizer:
            self.data.tokenizer = self.model.llm

    @property
    def run_name(self) -> str:
        return self.storage.run_name or self.name
