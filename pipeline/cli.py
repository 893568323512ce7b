"""Command line of the pipeline.

Usage: ``python -m pipeline run --config configs/demo.yaml [--stages data,train] [--set data.seed=7]``
(also installed as the ``s2rm`` console script). Sub-commands: ``run``, ``status``, ``report`` (re-render a report
from finished stages), ``clean``, ``stages``, ``devices``, ``predict``, ``preflight`` (``python -m pipeline preflight
--device jetson-orin-nano``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from foundation.errors import PipelineError
from pipeline.config import Config, load_config
from pipeline.logs import setup_logging
from pipeline.preflight.command import add_arguments as add_preflight_arguments

log = logging.getLogger("pipeline")


def _stage_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [s.strip() for s in text.split(",") if s.strip()]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.seed=7 (repeatable)",
    )
    parser.add_argument("--device", default=None, help="device profile from configs/devices/ (see `s2rm devices`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2rm", description="RIS edge-deployment pipeline")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run stages (and the upstream stages they need); cached stages are skipped")
    _add_config_args(run)
    run.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    run.add_argument("--force", action="store_true", help="redo the named stages even when cached")

    status = sub.add_parser("status", help="show each stage: done / stale / missing / disabled")
    _add_config_args(status)
    status.add_argument("--verify", action="store_true", help="also re-hash every output file")

    report = sub.add_parser(
        "report",
        help="re-render a device's report from its finished validate, bench and quantize stages (reruns nothing)",
    )
    _add_config_args(report)
    report.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/<run>/devices/<device>/report-rerendered)"
    )

    clean = sub.add_parser("clean", help="remove stage outputs of a run")
    _add_config_args(clean)
    clean.add_argument("--stages", default=None, help="comma-separated stages (default: the whole run)")

    sub.add_parser("stages", help="list the stages with their upstream stages and config sections")
    sub.add_parser("devices", help="list the device profiles")

    predict = sub.add_parser("predict", help="segment what a sentence names in an image with any artifact")
    predict.add_argument(
        "--artifact",
        required=True,
        type=Path,
        help=".onnx (ONNX Runtime), .xml (OpenVINO), .engine/.plan (TensorRT) or .safetensors (PyTorch)",
    )
    predict.add_argument("--image", required=True, type=Path)
    predict.add_argument("--text", required=True, action="append", help="a sentence (repeat for several)")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="folder for the mask and overlay PNGs")
    predict.add_argument("--runtime", default=None, help="override the runtime chosen from the file extension")
    predict.add_argument("--threads", type=int, default=None)

    preflight = sub.add_parser(
        "preflight",
        help="before training: export, Q/DQ INT8, TensorRT op check and ONNX Runtime parity of random-weight "
        "variants, with time and peak RSS per step",
    )
    add_preflight_arguments(preflight)
    return parser


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.runner import Runner

    runner = Runner(cfg)
    outcomes = runner.run(_stage_list(args.stages), force=args.force)
    for st in outcomes:
        log.info("%-9s %s %s", st.stage, st.state, st.reason)
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.runner import Runner

    runner = Runner(cfg)
    print(f"run folder: {runner.run_dir}")
    for st in runner.statuses(verify=args.verify):
        print(f"  {st.stage:<10} {st.state:<9} {st.reason}")
    return 0


def cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    """Re-render a device's report from the run layout the runner wrote (the report stage's own inputs).

    Raises:
        StageError: neither the validate nor the bench stage of that device has results.
    """
    from benchmarks.report import write_report
    from foundation.errors import StageError
    from pipeline.layout import GALLERY, RERENDERED, RESULTS
    from pipeline.runner import Runner
    from pipeline.stages.report import build_report

    runner = Runner(cfg)
    validate, bench = runner.stage_dir("validate"), runner.stage_dir("bench")
    if not (validate / RESULTS).is_file() and not (bench / RESULTS).is_file():
        raise StageError(
            f"neither {validate} nor {bench} has results.json; run them first: python -m pipeline run "
            f"--device {cfg.device.name} --stages validate,bench (with the same --config and --set)"
        )
    final = runner.stage_dir("report")
    optional = {n: runner.stage_dir(n) if runner.status(n).state != "disabled" else None for n in ("qat", "diagnose")}
    rep = build_report(cfg, validate, bench, runner.stage_dir("quantize"), final, optional["qat"], optional["diagnose"])
    out = args.out or final.parent / RERENDERED
    for path in write_report(rep, out, validate / GALLERY, optional["diagnose"]).values():
        print(path)
    return 0


def cmd_clean(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.runner import Runner

    for path in Runner(cfg).clean(_stage_list(args.stages)):
        log.info("removed %s", path)
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from pipeline.stage import load_stages, order

    registry = load_stages()
    for name in order(None):
        st = registry[name]
        where = "per device" if st.per_device else "shared"
        ups = ", ".join(st.upstream) or "-"
        print(f"{name:<10} {where:<10} upstream: {ups:<28} sections: {', '.join(st.sections)}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from pipeline.config import device_names, device_profile

    for name in device_names():
        print(f"{name:<22} {device_profile(name)['device'].get('description', '')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from foundation.errors import ArtifactError, choice_error
    from runtimes import get_runtime
    from runtimes.formats import RUNTIME_BY_SUFFIX, runtime_for_file
    from runtimes.image import read_image
    from runtimes.predict import segment_to_files
    from runtimes.processing import Processing

    name = args.runtime or runtime_for_file(args.artifact)
    if name is None:
        raise choice_error(
            "artifact type", args.artifact.suffix or args.artifact.name, RUNTIME_BY_SUFFIX, ArtifactError
        )
    if not args.artifact.is_file():
        raise ArtifactError(f"artifact {args.artifact} does not exist")
    rgb = read_image(args.image)  # before the (slower) model load: a bad image fails fast
    rt = get_runtime(name).load(args.artifact, threads=args.threads)
    for prediction in segment_to_files(rt, Processing.from_metadata(rt.metadata), rgb, args.text, args.image.stem,
                                       args.out):  # fmt: skip
        print(prediction.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "stages":
            return cmd_stages(args)
        if args.command == "devices":
            return cmd_devices(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "preflight":
            from pipeline.preflight.command import cmd_preflight

            return cmd_preflight(args)
        cfg = load_config(args.config, args.overrides, device=args.device)
        return {"run": cmd_run, "status": cmd_status, "report": cmd_report, "clean": cmd_clean}[args.command](args, cfg)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: unfinished stages keep no manifest and will be redone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
