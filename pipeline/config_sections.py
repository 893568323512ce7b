"""The sections of the config tree: one typed model per section, with defaults, bounds and descriptions.

Usage: ``ModelConfig(variant="edge")``; the whole tree and its loading are :mod:`pipeline.config`.

Each field's ``description`` is what ``python -m pipeline run --help`` and the docs show; bounds and ``Literal``
choices make a bad value a :class:`~foundation.errors.ConfigError` naming the key, the value and the valid set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from foundation.errors import closest
from runtimes.formats import DEVICE_BACKENDS

SPLITS = ("train", "val", "test", "testA", "testB", "testC")


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("an empty path; leave the key out (or set it to null) for the default")
    return value


# A path from the user: "" is refused (it would silently mean the current folder) and "~" is expanded.
UserPath = Annotated[Path, BeforeValidator(_not_blank), AfterValidator(Path.expanduser)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RunConfig(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="run folder name under root")
    root: UserPath = Path("runs")
    seed: int = Field(0, ge=0)


# SynRef's vocabulary (pipeline.data.synref draws and renders these; its tests check the two agree)
SYNREF_SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring")
SYNREF_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")


class SynRefConfig(Section):
    """Sizes of the generated data set (images per split) and scene ranges."""

    images: dict[str, int] = Field(
        default_factory=lambda: {"train": 1200, "val": 120, "testA": 80, "testB": 80},
        description="images per split (train, val, testA, testB); a split left out keeps its default, 0 skips it",
    )
    min_objects: int = Field(3, ge=2, le=12)
    max_objects: int = Field(8, ge=2, le=12)
    min_side: int = Field(192, ge=64, le=2048)
    max_side: int = Field(320, ge=64, le=4096)
    max_sentences: int = Field(3, ge=1, le=5)
    max_refs: int = Field(4, ge=1, le=12, description="referents per image (objects with a unique expression)")
    shapes: list[str] | None = Field(
        None, description="shape vocabulary (categories), at least 2 of SynRef's seven; default: all seven"
    )
    colours: list[str] | None = Field(None, description="colour vocabulary, at least 3 of SynRef's seven; default: all")
    image_format: Literal["jpg", "png"] = "jpg"

    def model_post_init(self, __context: Any) -> None:
        valid = ("train", "val", "testA", "testB")
        for split, count in type(self).model_fields["images"].default_factory().items():
            self.images.setdefault(split, count)  # so `--set data.synref.images.train=50` keeps the other splits
        for split, count in self.images.items():
            if split not in valid:
                raise ValueError(f"unknown SynRef split {split!r}{closest(split, valid)}; valid: {', '.join(valid)}")
            if count < 0:
                raise ValueError(f"SynRef images[{split!r}] = {count}; must be >= 0")
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects {self.min_objects} > max_objects {self.max_objects}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")
        for name, words, valid, least in (
            ("shapes", self.shapes, SYNREF_SHAPES, 2),
            ("colours", self.colours, SYNREF_COLOURS, 3),
        ):
            if words is None:
                continue
            for word in words:
                if word not in valid:
                    raise ValueError(
                        f"unknown SynRef {name[:-1]} {word!r}{closest(word, valid)}; valid: {', '.join(valid)}"
                    )
            if len(set(words)) != len(words) or len(words) < least:
                raise ValueError(f"SynRef {name} {words}: need at least {least} distinct ones of {', '.join(valid)}")


class DataConfig(Section):
    dataset: Literal["synref", "refcoco", "refcoco+", "refcocog", "refclef"] = "synref"
    root: UserPath | None = Field(
        None, description="REFER data root (the folder holding refcoco/ etc.); synref: unused"
    )
    images: UserPath | None = Field(None, description="images folder; default: the REFER convention under root")
    split_by: Literal["unc", "google", "umd", "berkeley"] = "unc"
    seed: int = Field(0, ge=0)
    synref: SynRefConfig = Field(default_factory=SynRefConfig)
    train_split: str = "train"
    eval_splits: list[str] = Field(default_factory=lambda: ["val", "testA", "testB"])

    def model_post_init(self, __context: Any) -> None:
        if self.dataset != "synref":
            return  # real REFER splits are known only once the refs file is read (pipeline.data.refer checks them)
        made = [k for k, v in self.synref.images.items() if v > 0]
        for split in (self.train_split, *self.eval_splits):
            if split not in made:
                hint = closest(split, made)
                raise ValueError(f"split {split!r} is not generated{hint}; SynRef makes: {', '.join(made)}")


class ModelConfig(Section):
    variant: str = "demo"
    img_size: int | None = Field(None, ge=32, le=2048, description="square input side; default: the variant's")
    vision: str | None = Field(
        None, description="timm backbone name (features at strides 4-32); default: the variant's"
    )
    vision_kwargs: dict[str, Any] | None = Field(
        None, description="timm.create_model keywords of the backbone (embed_dim, depths, ...); default: the variant's"
    )
    max_tokens: int = Field(20, ge=4, le=512)
    text_dir: UserPath | None = Field(None, description="HF directory of the text encoder and tokenizer")
    vision_checkpoint: UserPath | None = Field(None, description="timm checkpoint file for the vision encoder")
    vision_weights: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="packaged ImageNet weights of the vision encoder (model.pretrained: efficientnet_lite0.in1k, "
        "efficientnet_lite2.in1k, mobilenetv2_100.tv_in1k); sets the backbone to match; default: the variant's",
    )
    allow_download: bool = Field(False, description="let timm/HF download weights from the hub (needs internet)")
    shift_steps: int | None = Field(None, ge=0, le=8, description="K of recurrent coparsing; 0 = no cyclic shifts")
    balancing: bool | None = None
    casg_attention: bool | None = None
    text_head: bool | None = Field(None, description="sentence-conditioned dynamic term in the mask head")
    sentence_pool: Literal["mean", "cls", "attention"] | None = None
    text_adapter: bool | None = Field(None, description="trainable residual MLP on the word features")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="sigmoid threshold of the mask")


class TrainConfig(Section):
    """Optimisation recipe of the train stage; distillation reuses it. See configs/train/ for the paper recipe."""

    seed: int = Field(0, ge=0, description="seed of initialisation, data order and dropout")
    steps: int = Field(1500, ge=1, description="optimizer steps (ignored when epochs is set)")
    epochs: int | None = Field(None, ge=1, description="passes over the train split; overrides steps when set")
    batch_size: int = Field(8, ge=1, description="global batch, split evenly across torchrun processes")
    expressions_per_image: int = Field(
        1, ge=1, le=32, description="samples of one image per batch (k): the image is encoded once for k expressions"
    )
    lr: float = Field(5e-5, gt=0, description="peak lr of the new layers (fusion, decoder, scratch encoders)")
    encoder_lr: float | None = Field(None, gt=0, description="lr of pretrained encoders; default: lr")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decay; never on norms, biases, position tables")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up from 0, then poly decay to 0")
    poly_power: float = Field(0.9, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    category_weight: float = Field(
        0.0,
        ge=0,
        description="auxiliary loss: per-pixel category cross-entropy on the vision features, from every annotated "
        "object of the image (instances.json); a training-only head, not exported; 0 = off",
    )
    eval_every: int = Field(250, ge=1, description="validate every N steps (and after the last step)")
    eval_samples: int = Field(400, ge=1, description="val samples scored per validation (a fixed subset)")
    val_split: str = Field("val", description="split used for validation and best-checkpoint selection")
    checkpoint_every: int = Field(100, ge=1, description="write the resumable `last` state every N steps")
    log_every: int = Field(10, ge=1, description="metrics.jsonl / TensorBoard row every N steps")
    best_metric: Literal["miou", "oiou"] = "miou"
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="autocast: on CUDA auto = bf16 if supported, else fp16; on CPU auto = off, bf16 opts in"
    )
    num_workers: int = Field(2, ge=0)
    channels_last: bool = Field(
        False,
        description="train in channels-last memory format (NHWC): same model and numbers to rounding, ~1.25x faster "
        "steps on CPU for the convolution-heavy decoder",
    )
    freeze_text: bool = False
    freeze_vision: bool = Field(
        False, description="keep the pretrained vision encoder as shipped (no backward through it: ~30% of a step)"
    )
    freeze_vision_bn: bool = Field(
        False, description="keep the pretrained vision encoder's BatchNorm statistics as shipped (its affine trains)"
    )
    hflip: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of a horizontal flip per training image, with 'left' and 'right' swapped in each of "
        "its sentences so they stay true (both words must be single tokens of the tokenizer)",
    )
    vflip: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of a vertical flip per training image, with 'top'/'bottom' and 'above'/'below' "
        "swapped in its sentences; for scenes without an up and down (SynRef's flat shapes), not for photographs",
    )
    dropout: float | None = Field(None, ge=0, lt=1, description="set p of every nn.Dropout; default: the model's")
    drop_path: float | None = Field(None, ge=0, lt=1, description="set every stochastic-depth rate; default: model's")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process; default: torch's")
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms (warn-only)")
    tensorboard: bool = Field(False, description="also write TensorBoard logs under tb/")


class DistillConfig(Section):
    """Student training from a frozen teacher; optimizer, schedule and eval settings come from ``train``."""

    enabled: bool = False
    student: str = Field("edge", description="student model variant")
    student_img_size: int | None = Field(None, ge=32, le=2048, description="default: the student variant's")
    student_vision_checkpoint: UserPath | None = Field(None, description="timm checkpoint of a pretrained student")
    teacher_checkpoint: UserPath | None = Field(
        None, description="teacher .safetensors; default: the train stage's best"
    )
    steps: int = Field(1000, ge=1)
    lr: float | None = Field(None, gt=0, description="default: train.lr")
    temperature: float = Field(2.0, gt=0, description="softens both sigmoids of the logit distillation")
    logit_weight: float = Field(1.0, ge=0, description="lambda of the mask-logit distillation term")
    feature_weight: float = Field(0.0, ge=0, description="weight of fused-feature distillation (1x1 adapters)")
    task_weight: float = Field(1.0, ge=0, description="weight of the Dice + BCE task loss on the ground truth")


class ExportConfig(Section):
    opset: int | None = Field(
        None, ge=13, le=23, description="ONNX opset; default: device.opset, else the dynamo exporter's; <=17: legacy"
    )
    parity_samples: int = Field(8, ge=1, description="real evaluation samples of the PyTorch parity check")
    parity_atol: float = Field(1e-4, gt=0, description="FP32 parity above this max |diff| is logged as a warning")
    fp16: bool = Field(True, description="also write full_fp16.onnx (LayerNorm/Softmax/reductions kept FP32)")
    split_graphs: bool = Field(True, description="also export image_encoder, text_encoder, decoder")
    openvino: bool | None = Field(
        None, description="also convert every ONNX to OpenVINO IR FP32; default: on unless device.backend is tensorrt"
    )


class CalibrateConfig(Section):
    samples: int = Field(300, ge=1, description="calibration samples from the train split (warns under 100)")
    seed: int = Field(0, ge=0, description="seed of the stratified draw")


class QATConfig(Section):
    """Quantization-aware fine-tuning with the FP32 model as the teacher (the ``qat`` stage)."""

    mode: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: each INT8 path whose PTQ drop (after fallback) misses quant.target_miou"
    )
    steps: int = Field(150, ge=1, description="fine-tuning steps per INT8 path")
    batch_size: int = Field(8, ge=1, description="samples per fine-tuning step")
    lr: float = Field(1e-5, gt=0, description="peak learning rate of the weights")
    scale_lr: float = Field(1e-3, gt=0, description="learning rate of the quantizer scales")
    temperature: float = Field(2.0, gt=0, description="softens both sigmoids of the logit distillation")
    logit_weight: float = Field(1.0, ge=0, description="weight of the mask-logit distillation from the FP32 model")
    task_weight: float = Field(1.0, ge=0, description="weight of the Dice + BCE loss on the ground truth")
    calibration_samples: int = Field(32, ge=1, description="calibration samples that set the initial scales")
    openvino_from: Literal["qdq", "nncf"] = Field(
        "qdq",
        description="the OpenVINO QAT IR: qdq converts the fine-tuned Q/DQ ONNX (one fine-tuning for both paths); "
        "nncf fine-tunes NNCF's PyTorch quantizer (its IR, converted from torch, ran 1.4x slower here)",
    )
    log_every: int = Field(25, ge=1, description="steps between loss log lines (and curve points)")


class DiagnoseConfig(Section):
    """Why an INT8 artifact loses accuracy (the ``diagnose`` stage): per-layer-group sensitivity, first divergence."""

    enabled: bool = Field(True, description="run the diagnose stage (a few minutes on the demo model)")
    samples: int = Field(32, ge=1, description="tuning-subset samples each sensitivity variant is scored on")
    max_groups: int = Field(12, ge=1, description="layer groups of the sensitivity analysis (bounds its time)")
    modes: list[Literal["float", "quantized"]] = Field(
        default_factory=lambda: ["float"], description="float: each group alone float; quantized: alone INT8"
    )
    divergence_samples: int = Field(4, ge=1, description="calibration samples of the first-divergence comparison")
    sqnr_threshold_db: float = Field(20.0, description="a layer diverges when its SQNR against FP32 falls below")


class QuantConfig(Section):
    openvino: bool | None = Field(
        None, description="OpenVINO INT8 with NNCF; default: on unless device.backend is tensorrt"
    )
    qdq: bool = Field(True, description="TensorRT-bound Q/DQ INT8 ONNX")
    qdq_backend: Literal["auto", "modelopt", "onnxruntime"] = Field(
        "auto", description="auto: modelopt when installed, else onnxruntime"
    )
    qdq_float: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="float remainder of the Q/DQ graph; auto: fp16 with modelopt for a tensorrt device"
    )
    budget_miou: float = Field(1.0, gt=0, description="hard budget: allowed mIoU drop in points")
    target_miou: float = Field(0.5, gt=0, description="target mIoU drop in points")
    accuracy_control: bool = Field(
        False, description="OpenVINO: nncf.quantize_with_accuracy_control with max_drop = target_miou (slow)"
    )
    eval_samples: int = Field(200, ge=1, description="validation subset (eval splits) the drop is measured on")
    max_fallback_steps: int = Field(8, ge=0, description="Q/DQ fallback rounds (0: none)")
    fallback_order: Literal["sensitivity", "noise"] = Field(
        "sensitivity",
        description="order nodes return to float: layer groups by measured accuracy recovery (quant.diagnose "
        "samples and groups), or each node's local INT8 noise (cheaper)",
    )
    latency_runs: int = Field(20, ge=1, description="timed runs of the quick speed-up measurement")
    qat: QATConfig = Field(default_factory=QATConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)


class BuildConfig(Section):
    workspace_mb: int | None = Field(None, ge=64, description="builder workspace; default: device.workspace_mb")
    precision: Literal["auto", "int8", "fp16", "fp32"] = Field("auto", description="auto: device.precision")
    timing_cache: bool = Field(True, description="reuse a timing cache file across builds")
    gpu_fallback: bool = Field(True, description="with a DLA core: let unsupported layers run on the GPU")
    strongly_typed: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on for Q/DQ and FP16 ONNX on TensorRT >= 10 (required from 11)"
    )


class ValidateConfig(Section):
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples of the paired mIoU drop's 95% CI")
    max_samples: int | None = Field(None, ge=1, description="samples per eval split, spread evenly; default: all")
    fp32_max_samples: int | None = Field(
        None,
        ge=1,
        description="samples per eval split for the FP32 exports other than the reference (the export stage checks "
        "they match PyTorch), spread evenly among the others; default: as many as max_samples",
    )
    gate_on: Literal["estimate", "upper_ci"] = Field(
        "estimate", description="INT8 passes when this end of the drop is within quant.budget_miou"
    )
    gallery: int = Field(
        8, ge=0, le=64, description="eval samples in the report's mask gallery (worst INT8 disagreement first); 0: none"
    )


class BenchConfig(Section):
    warmup: int = Field(5, ge=0, description="untimed runs per artifact before timing")
    runs: int = Field(50, ge=1, description="timed runs per artifact, interleaved across artifacts")
    threads: int | None = Field(None, ge=1, description="threads of every runtime; default: device.threads")
    expressions: list[int] = Field(
        default_factory=lambda: [1, 4, 8], min_length=2, description="k expressions answered on one encoded frame"
    )
    split_graph: bool = Field(True, description="also time the split graphs (encode once, k expressions)")
    peak_rss: bool = Field(True, description="measure each artifact's peak RSS in a fresh subprocess")


class DeviceConfig(Section):
    """A deployment target (profiles in ``configs/devices/``, chosen with ``--device NAME``)."""

    name: str = "x86-cpu"
    description: str = "x86-64 CPU host: OpenVINO INT8 and ONNX Runtime"
    backend: Literal[DEVICE_BACKENDS] = "openvino"  # type: ignore[valid-type]  (runtimes.formats)
    precision: Literal["fp32", "fp16", "int8"] = "int8"
    img_size: int | None = Field(None, ge=32, le=2048, description="input side for this device; default: the model's")
    jetpack: str | None = Field(None, description="JetPack release the profile targets (the oldest), e.g. '6.1'")
    trt_version: str | None = Field(None, pattern=r"^\d+\.\d+", description="TensorRT version floor, e.g. '10.3'")
    compute_capability: str | None = Field(None, description="GPU SM version, e.g. '8.7' (Orin)")
    dla_core: int | None = Field(None, ge=0, le=1, description="DLA core to build for (GPU fallback on); None = GPU")
    memory_gb: float | None = Field(None, gt=0)
    workspace_mb: int = Field(2048, ge=64)
    threads: int | None = Field(None, ge=1)
    opset: int | None = Field(None, ge=13, le=23, description="ONNX opset the device's parser needs")

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11+ removed weak typing: no --fp16/--int8 flags, no calibrators; the graph's types decide."""
        return self.backend == "tensorrt" and self.trt_version is not None and int(self.trt_version.split(".")[0]) >= 11
