"""One typed config tree, loaded from YAML with ``--set a.b=value`` overrides.

Usage: ``cfg = load_config("configs/demo.yaml", ["data.seed=7"])``.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key, the value and the valid
set, with the closest valid key as a suggestion. A config file may ``extends: other.yaml`` (path relative to itself);
the resolved tree is what every run records.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundation.errors import ConfigError, closest
from foundation.io import json_digest
from pipeline.config_sections import (
    BenchConfig,
    BuildConfig,
    CalibrateConfig,
    DataConfig,
    DeviceConfig,
    DistillConfig,
    ExportConfig,
    ModelConfig,
    QuantConfig,
    RunConfig,
    Section,
    TrainConfig,
    ValidateConfig,
)

# Strongly typed TensorRT runs Q/DQ graphs with FP16 scales; QuantizeLinear/DequantizeLinear take them from opset 19.
FP16_QDQ_MIN_OPSET = 19


def check_device_profile(cfg: Config) -> None:
    """Refuse what a device profile's TensorRT cannot build as asked (checks across sections).

    On a strongly typed only TensorRT (11+) an INT8 Q/DQ engine runs each non-quantized layer in the precision the
    graph gives it: a float remainder left in FP32 would silently give an engine with every such layer in FP32.

    Raises:
        ConfigError: naming the keys to change.
    """
    dev, q = cfg.device, cfg.quant
    precision = dev.precision if cfg.build.precision == "auto" else cfg.build.precision
    if not (dev.strongly_typed_only and precision == "int8" and q.qdq):
        return
    if q.qdq_float == "fp32":
        raise ConfigError(
            f"device {dev.name!r}: TensorRT {dev.trt_version} is strongly typed only (no --fp16 flag), so the Q/DQ "
            f"INT8 graph must carry its float remainder as FP16; quant.qdq_float = {q.qdq_float!r} would build every "
            "non-quantized layer in FP32. Set quant.qdq_float to fp16 or auto (valid here: auto, fp16)"
        )
    opset = cfg.export.opset or dev.opset
    if opset is not None and opset < FP16_QDQ_MIN_OPSET:
        raise ConfigError(
            f"device {dev.name!r}: an FP16 float remainder needs FP16 Q/DQ scales, opset >= {FP16_QDQ_MIN_OPSET}; "
            f"export.opset / device.opset = {opset}"
        )


def qdq_float_dtype(cfg: Config, backend: str) -> str:
    """The float type of the Q/DQ INT8 graph's non-quantized layers (``quant.qdq_float``; ``auto`` decides).

    ``auto``: FP16 where the device's TensorRT is strongly typed only (the graph's types are the engine's), or for
    ModelOpt on a TensorRT device (its native output); FP32 otherwise (ONNX Runtime's quantizer, and the weakly typed
    builds that lower the remainder to FP16 with ``--fp16``).

    Args:
        cfg: the resolved config.
        backend: the Q/DQ backend that writes the graph (``quantize.qdq.resolve_backend``).
    """
    chosen = cfg.quant.qdq_float
    if chosen != "auto":
        return chosen
    if cfg.device.strongly_typed_only:
        return "fp16"
    return "fp16" if backend == "modelopt" and cfg.device.backend == "tensorrt" else "fp32"


class Config(Section):
    """The whole run configuration; ``section(name)`` gives one section as a plain dict (a stage's cache key)."""

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    bench: BenchConfig = Field(default_factory=BenchConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    def section(self, name: str) -> dict[str, Any]:
        """The JSON-ready content of one top-level section (what a stage's cache key hashes)."""
        dumped = self.to_dict()
        if name not in dumped:
            raise ConfigError(f"unknown config section {name!r}{closest(name, dumped)}; valid: {', '.join(dumped)}")
        return dumped[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def openvino_artifacts(self, setting: bool | None) -> bool:
        """Whether a stage makes OpenVINO artifacts: ``setting`` (``export.openvino``, ``quant.openvino``) when
        set, else on for every device except a TensorRT one, which has no use for them."""
        return self.device.backend != "tensorrt" if setting is None else setting

    def timing_threads(self) -> int | None:
        """Threads every runtime gets when timed (quantize, bench): ``bench.threads``, else the device profile's."""
        return self.bench.threads or self.device.threads

    def digest(self, sections: list[str] | None = None) -> str:
        tree = self.to_dict()
        if sections is not None:
            tree = {k: tree[k] for k in sections}
        return json_digest(tree)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} extends itself through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(tree).__name__}")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    base = _read_yaml(path.parent / str(parent), (*seen, path))
    return _merge(base, tree)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [(f.alias or name) for name, f in model.model_fields.items()]


def _field_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            ann = field.annotation
            return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return None


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b=value`` (value parsed as YAML) to a raw config tree, checking each key exists."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} names no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: value {raw!r} is not valid YAML: {exc}") from exc
    model: type[BaseModel] | None = Config
    node = tree
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if model is not None:
            known = _known_keys(model)
            if part not in known:
                raise ConfigError(
                    f"unknown config key {here!r}{closest(part, known)}; valid keys here: {', '.join(known)}"
                )
        if depth == len(parts) - 1:
            node[part] = value
            return
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
        model = _field_model(model, part) if model is not None else None


def _explain(exc: ValidationError, tree: dict[str, Any]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model: type[BaseModel] | None = Config
            for part in loc[:-1]:
                model = _field_model(model, part) if model else None
            known = _known_keys(model) if model else []
            hint = closest(loc[-1], known)
            lines.append(f"unknown config key {key!r}{hint}; valid keys here: {', '.join(known)}")
            continue
        value = err.get("input")
        extra = ""
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            extra = closest(str(value), [v.strip(" '") for v in str(ctx["expected"]).replace(" or ", ",").split(",")])
        lines.append(f"config key {key!r} = {value!r}: {err['msg']}{extra}")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def build_config(tree: dict[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, tree) from None
    check_input_paths(cfg)
    check_device_profile(cfg)
    return cfg


# Paths the pipeline reads: (key, "dir" or "file", what it should be, whether the config uses it). Relative paths
# are relative to the working folder, as everywhere on the command line.
INPUT_PATHS: tuple[tuple[str, str, str, Callable[[Config], bool]], ...] = (
    ("data.root", "dir", "the REFER data root holding refcoco/ etc.", lambda c: c.data.dataset != "synref"),
    ("data.images", "dir", "the folder of the data set's images", lambda c: c.data.dataset != "synref"),
    ("model.text_dir", "dir", "a Hugging Face model folder with tokenizer.json", lambda c: True),
    ("model.vision_checkpoint", "file", "a timm checkpoint", lambda c: True),
    ("distill.student_vision_checkpoint", "file", "a timm checkpoint", lambda c: c.distill.enabled),
    ("distill.teacher_checkpoint", "file", "<prefix>.safetensors of a checkpoint", lambda c: c.distill.enabled),
)


def check_input_paths(cfg: Config) -> None:
    """Refuse a configured input path that does not exist or is of the wrong kind, naming the key and where it
    resolves to (a missing data set or checkpoint should fail here, not an hour into a run).

    Raises:
        ConfigError: the first path that is missing, or a file where a directory is expected (or the reverse).
    """
    for key, kind, what, used in INPUT_PATHS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None or not used(cfg):
            continue
        path = value.with_suffix(".safetensors") if key == "distill.teacher_checkpoint" else value
        try:
            if path.is_dir() if kind == "dir" else path.is_file():
                continue
            state = ("is not a directory" if kind == "dir" else "is not a file") if path.exists() else "does not exist"
        except OSError as exc:  # e.g. a name too long for the filesystem
            state = f"cannot be read ({exc.strerror})"
        raise ConfigError(
            f"config key {key!r} = {str(value)[:200]!r}: {str(path.absolute())[:200]} {state}; "
            f"expected {'a directory' if kind == 'dir' else 'a file'}: {what}"
        )


DEVICES_DIR = Path(__file__).resolve().parent.parent / "configs" / "devices"


def device_names() -> list[str]:
    """The device profiles shipped in ``configs/devices/``."""
    return sorted(p.stem for p in DEVICES_DIR.glob("*.yaml"))


def device_profile(name: str) -> dict[str, Any]:
    """The raw config tree of a device profile; an unknown name lists the valid ones."""
    path = DEVICES_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = device_names()
        raise ConfigError(f"unknown device {name!r}{closest(name, valid)}; valid devices: {', '.join(valid)}")
    return _read_yaml(path)


def load_config(path: str | Path | None, overrides: list[str] | None = None, device: str | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), merge a device profile, apply overrides.

    Args:
        path: YAML file; None gives the built-in defaults.
        overrides: ``key.path=value`` strings, values parsed as YAML, applied last.
        device: name of a profile in ``configs/devices/`` merged over the file before the overrides.
    """
    tree = _read_yaml(Path(path)) if path is not None else {}
    if device is not None:
        tree = _merge(tree, device_profile(device))
    for assignment in overrides or []:
        apply_override(tree, assignment)
    return build_config(tree)


def save_config(cfg: Config, path: Path) -> None:
    from foundation.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
