"""The ``bundle`` stage: the device's deploy bundle (folder + reproducible .tar.gz + SHA256SUMS).

Usage: ``python -m pipeline run --config configs/demo.yaml --device jetson-orin-nano --stages bundle``.

For a TensorRT device the bundle holds the Q/DQ INT8 and FP16 ONNX models, the ``trtexec`` build script and the
Python builder; for a CPU device the OpenVINO IR and ONNX models. ``build_engine.sh`` runs ``trtexec`` for each engine
and then ``build_engine.py --sidecar-only``, which writes the engine's JSON sidecar (TensorRT version, GPU, settings,
source sha256, and for a DLA engine how many layers run on DLA) that the runtime requires. Each engine's settings come
from :func:`runtimes.tensorrt_settings.device_settings` with the ``build`` config section (strong typing, workspace, GPU
fallback, timing cache; a change there remakes the bundle) for the profile's TensorRT version floor, each ONNX's
float remainder and the profile's DLA core (the FP16 engine only: DLA does not run Q/DQ INT8); a weakly typed build
keeps each ONNX's decomposed LayerNorms and softmax inputs in FP32. The trtexec lines hold only the options of that
TensorRT version. The settings of each ``trtexec`` line and the description of each model are kept in
``metadata.json`` (``models[precision]["build"]`` and ``["description"]``) for the sidecars. Golden inputs are real
evaluation samples, pre-processed on the host; golden outputs are the host's outputs of each model's reference (ONNX
Runtime for ONNX, OpenVINO for IR; FP16 is checked against FP32). ``verify.py`` compares a backend on the robot
against them.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import StageError
from pipeline.layout import BUNDLE, TOKENIZER
from pipeline.stage import CODE_EVALUATION, StageContext, stage
from runtimes.formats import FORMATS, MASK_OUTPUT, bundle_formats

log = logging.getLogger(__name__)

GOLDEN_SAMPLES = 8
GOLDEN_FRAMES = 4
# Tolerances of verify.py per precision: INT8 and FP16 kernels round differently on every backend.
TOLERANCE = {
    "fp32": {"max_abs": 1e-3, "mask_iou": 0.999},
    "fp16": {"max_abs": 0.25, "mask_iou": 0.98},
    "int8": {"max_abs": 1.5, "mask_iou": 0.95},
}


def model_plan(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Which models go into the bundle for this device: the device backend's column of the format table
    (:func:`runtimes.formats.bundle_formats`), each with the file and runtime of its golden reference."""
    return plan_from_folders(
        ctx.cfg.device.backend, {"export": ctx.upstream("export"), "quantize": ctx.upstream("quantize")}
    )


def plan_from_folders(backend: str, folders: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """precision → {format key: file, ``reference``: {key: (runtime, file)}, ``engine``: path in the bundle}."""
    plan: dict[str, dict[str, Any]] = {}
    for precision, entry in bundle_formats(backend).items():
        item: dict[str, Any] = {}
        for key, fmt in entry.items():
            role = fmt.role(backend)
            item[key] = folders[fmt.stage] / fmt.file
            ref = FORMATS[role.reference] if role.reference else fmt
            item.setdefault("reference", {})[key] = (ref.runtime, folders[ref.stage] / ref.file)
            if role.engine:
                item["engine"] = role.engine
        plan[precision] = item
    return plan


def golden_samples(ctx: StageContext, proc: Any) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, Any]]]:
    """Pre-processed inputs of the first evaluation samples, and a few raw frames with their sample records."""
    from pipeline.data.dataset import open_dataset

    refer = open_dataset(ctx.cfg, ctx.upstream("data"))
    split = ctx.cfg.data.eval_splits[0]
    samples = refer.samples(split)[:GOLDEN_SAMPLES]
    feeds: dict[str, list[np.ndarray]] = {}
    frames = []
    for i, sample in enumerate(samples):
        rgb = refer.image(sample.image_id)
        for name, arr in proc(rgb, sample.text).items():
            feeds.setdefault(name, []).append(arr)
        if i < GOLDEN_FRAMES:
            frames.append((rgb, sample))
    return {k: np.concatenate(v) for k, v in feeds.items()}, frames


@stage(
    "bundle",
    upstream=("data", "export", "quantize"),
    sections=("device", "model", "data", "build"),
    version="2",
    toolchain=("onnxruntime", "openvino", "tokenizers", "transformers"),
    code=(*CODE_EVALUATION, "pipeline.bundle", "pipeline.jetpack"),
    per_device=True,
)
def run_bundle(ctx: StageContext) -> dict[str, Any]:
    """Write the device's deploy bundle, its checksums and its reproducible tarball."""
    from pipeline.bundle import copy_scripts, make_tarball, vendor_runtime, write_checksums, write_metadata
    from pipeline.jetpack import write_bundle_readme
    from runtimes.export import read_onnx_metadata

    dev = ctx.cfg.device
    out = ctx.out / BUNDLE
    plan = model_plan(ctx)
    missing = [str(p) for e in plan.values() for k, p in e.items() if k in ("onnx", "openvino") and not p.is_file()]
    if missing:
        raise StageError(f"bundle: artifacts missing (did export/quantize fail?): {', '.join(missing)}")
    # 1. models, tokenizer, runtime code, scripts
    models = copy_models(plan, out)
    shutil.copytree(ctx.upstream("export") / TOKENIZER, out / TOKENIZER)
    vendored = vendor_runtime(out / "lib")
    copy_scripts(out)
    write_bundle_readme(out / "README.md", dev.jetpack, dev.backend)  # what to pip install on that JetPack
    # 2. golden inputs and outputs from the host
    golden = write_golden(ctx, plan, out)
    # 3. each model's own description (the engine's sidecar gets it), then the TensorRT build script for the robot
    for precision, entry in plan.items():
        own = read_onnx_metadata(entry["onnx"]) if "onnx" in entry else dict(golden.metadata[precision])
        models[precision]["description"] = {k: v for k, v in own.items() if k not in ("tokenizer_dir",)}
    commands = engine_commands(ctx, models, out)
    if commands:
        write_engine_script(ctx, commands, out)
    # 4. metadata, checksums, tarball
    write_metadata(out, bundle_metadata(ctx, models, golden, vendored))
    write_checksums(out)
    digest = make_tarball(out, ctx.out / "bundle.tar.gz")
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    log.info("bundle for %s: %s (%.1f MB), tar sha256 %s", dev.name, out, size_mb, digest[:16])
    return {
        "device": dev.name,
        "models": {p: sorted(m) for p, m in models.items()},
        "size_mb": round(size_mb, 2),
        "tar_sha256": digest,
        "golden_samples": golden.samples,
        "engine_script": bool(commands),
    }


def copy_models(plan: dict[str, dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """Copy each planned model into ``out/models``; returns the metadata's ``models`` entries (paths in the bundle,
    tolerances, golden output files, engine paths)."""
    from pipeline.bundle import copy_file

    models: dict[str, dict[str, Any]] = {}
    for precision, entry in plan.items():
        models[precision] = {
            "tolerance": TOLERANCE[precision],
            # one golden file per model format: an OpenVINO INT8 IR and a Q/DQ ONNX are different quantizations
            "golden_outputs": {key: f"golden/outputs_{precision}_{key}.npz" for key in entry["reference"]},
        }
        for key in ("onnx", "openvino"):
            if key in entry:
                copy_file(entry[key], out / "models" / entry[key].name)
                models[precision][key] = f"models/{entry[key].name}"
        if "engine" in entry:
            models[precision]["engine"] = entry["engine"]
    return models


@dataclass
class Golden:
    """What :func:`write_golden` wrote: the pre-processing, the first reference's description, each precision's
    reference metadata, the frames' records and how many golden samples there are."""

    proc: Any
    description: dict[str, Any]
    metadata: dict[str, dict[str, Any]]
    frames: list[dict[str, Any]]
    samples: int


def write_golden(ctx: StageContext, plan: dict[str, dict[str, Any]], out: Path) -> Golden:
    """Golden inputs (real evaluation samples, pre-processed on the host), each model's reference outputs on them,
    and a few frames with the first model's mask, under ``out/golden``."""
    from PIL import Image

    from runtimes import get_runtime
    from runtimes.processing import Processing

    threads = ctx.cfg.device.threads
    first = next(iter(plan))
    first_reference = next(iter(plan[first]["reference"].values()))
    description = dict(get_runtime(first_reference[0]).load(first_reference[1]).metadata)
    proc = Processing.from_metadata(description, tokenizer_dir=out / TOKENIZER)
    inputs, frames = golden_samples(ctx, proc)
    (out / "golden").mkdir(parents=True, exist_ok=True)
    np.savez(out / "golden" / "inputs.npz", **inputs)
    metadata: dict[str, dict[str, Any]] = {}
    for precision, entry in plan.items():
        for key, (backend, path) in entry["reference"].items():
            rt = get_runtime(backend).load(path, threads=threads)
            metadata.setdefault(precision, dict(rt.metadata))
            n = len(inputs["image"])
            logits = np.concatenate(
                [rt.infer({k: v[i : i + 1] for k, v in inputs.items()})[MASK_OUTPUT] for i in range(n)]
            )
            np.savez(out / "golden" / f"outputs_{precision}_{key}.npz", mask_logits=logits)
    frames_meta = []
    rt = get_runtime(first_reference[0]).load(first_reference[1], threads=threads)
    for i, (rgb, sample) in enumerate(frames):
        mask = proc.postprocess(rt.infer(proc(rgb, sample.text))[MASK_OUTPUT][0], rgb.shape[:2])
        Image.fromarray(rgb).save(out / "golden" / f"frame_{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "golden" / f"frame_{i}_mask_{first}.png")
        frames_meta.append({"image": f"golden/frame_{i}.png", "text": sample.text, "precision": first,
                            "mask": f"golden/frame_{i}_mask_{first}.png", "sample_id": sample.sent_id})  # fmt: skip
    return Golden(proc, description, metadata, frames_meta, len(inputs["image"]))


def engine_commands(ctx: StageContext, models: dict[str, dict[str, Any]], out: Path) -> list[list[str]]:
    """The robot's build commands: per engine, its ``trtexec`` line (only that TensorRT version's options) and the
    sidecar step (the runtime refuses an engine without one). Records each engine's settings in ``models``."""
    from runtimes.fp32_layers import fp32_layer_names
    from runtimes.tensorrt_commands import trtexec_command
    from runtimes.tensorrt_placement import layer_info_path
    from runtimes.tensorrt_settings import device_settings, float_remainder

    dev, build = ctx.cfg.device, ctx.cfg.build
    commands: list[list[str]] = []
    for precision, entry in models.items():
        if "engine" not in entry:
            continue
        # the layers a weakly typed build keeps in FP32 (build_engine.py re-decides the typing on the robot)
        entry["fp32_layers"] = list(fp32_layer_names(out / entry["onnx"]))
        settings = device_settings(
            precision,
            dev.trt_version,
            dla_core=dev.dla_core,
            workspace_mb=build.workspace_mb or dev.workspace_mb,
            strongly_typed=build.strongly_typed,
            gpu_fallback=build.gpu_fallback,
            timing_cache="timing.cache" if build.timing_cache else None,
            remainder=float_remainder(entry["description"]) if precision == "int8" else None,
            fp32_layers=entry["fp32_layers"],
        )
        entry["build"] = asdict(settings)
        if settings.dla_core is not None:  # the trtexec line exports it; the sidecar step reads it
            entry["layer_info"] = str(layer_info_path(entry["engine"]))
        commands.append(trtexec_command(entry["onnx"], entry["engine"], settings, dev.trt_version))
        commands.append(["${PYTHON:-python3}", "build_engine.py", "--sidecar-only", "--precision", precision])
    return commands


def write_engine_script(ctx: StageContext, commands: list[list[str]], out: Path) -> None:
    """``build_engine.sh``: the engines' commands after a check that the interpreter has TensorRT."""
    from runtimes.tensorrt_commands import python_check, write_build_script

    dev = ctx.cfg.device
    (out / "engines").mkdir(exist_ok=True)
    sidecar_why = (
        "build_engine.py --sidecar-only needs to record each engine's sidecar (JetPack: sudo apt install "
        "python3-libnvinfer)"
    )
    write_build_script(
        out / "build_engine.sh",
        [["mkdir", "-p", "engines"], *(_shell_line(c) for c in commands)],
        note=(
            f"{dev.description}; TensorRT >= {dev.trt_version}. After each trtexec, build_engine.py --sidecar-only "
            "writes the engine's JSON sidecar (TensorRT version, GPU, settings, source sha256): the runtime "
            "refuses an engine without one.\nPYTHON=<interpreter> picks another python3."
        ),
        preamble=[python_check(["tensorrt"], sidecar_why)],
    )


def bundle_metadata(
    ctx: StageContext, models: dict[str, dict[str, Any]], golden: Golden, vendored: list[str]
) -> dict[str, Any]:
    """The bundle's ``metadata.json``: device, description, pre-processing, models, golden files, build settings."""
    dev, build = ctx.cfg.device, ctx.cfg.build
    return {
        "device": dev.model_dump(mode="json"),
        "description": {k: v for k, v in golden.description.items() if k not in ("tokenizer_dir",)},
        "threshold": float(golden.proc.threshold),
        "processing": golden.proc.describe() | {"tokenizer_dir": TOKENIZER},
        "models": models,
        "golden": {"inputs": "golden/inputs.npz", "frames": golden.frames, "samples": golden.samples},
        "tensorrt": {
            "version_floor": dev.trt_version,
            "workspace_mb": build.workspace_mb or dev.workspace_mb,
            "dla_core": dev.dla_core,
            "strongly_typed": build.strongly_typed,
            "gpu_fallback": build.gpu_fallback,
            "timing_cache": build.timing_cache,
        },
        "vendored": vendored,
    }


def _shell_line(cmd: list[str]) -> str:
    """A command as a shell line; a leading ``${PYTHON:-python3}`` stays an expansion (double-quoted), the rest is
    quoted."""
    head, *rest = cmd
    first = f'"{head}"' if head == "${PYTHON:-python3}" else shlex.quote(head)
    return " ".join([first, *(shlex.quote(c) for c in rest)])


def bundle_dir(stage_dir: Path) -> Path:
    return stage_dir / BUNDLE
