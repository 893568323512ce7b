"""The ``preflight`` sub-command (``python -m pipeline preflight``, ``make preflight``): its options, the command line
recorded with the results, and :func:`cmd_preflight`, which runs the pre-flight and prints the step table."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from foundation.errors import ConfigError
from pipeline.preflight.driver import preflight
from pipeline.preflight.plan import DEFAULT_OUT, DEFAULT_VARIANTS, RESULT_MD, SETTABLE_SECTIONS, PreflightOptions
from pipeline.preflight.render import failures, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``preflight`` sub-command's options (see :func:`cmd_preflight`)."""
    parser.add_argument("--device", required=True, help="device profile from configs/devices/ (see `s2rm devices`)")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help=f"model variant (repeatable or comma-separated; default: {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an export.*, quant.* or device.* setting, e.g. --set export.opset=17 (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results go to OUT/<device>/<variant>/")
    defaults = PreflightOptions()
    parser.add_argument("--calib-samples", type=int, default=defaults.calib_samples, help="random calibration inputs")
    parser.add_argument("--parity-samples", type=int, default=defaults.parity_samples, help="random parity inputs")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per variant (0: no limit)")
    parser.add_argument("--max-rss-gb", type=float, default=None, help="stop a variant whose RSS exceeds this")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the FP32 and Q/DQ ONNX beside the results")
    parser.add_argument(
        "--in-process", action="store_true", help="no process per variant (peaks then include earlier variants)"
    )


def _variants(values: list[str] | None) -> list[str]:
    if not values:
        return list(DEFAULT_VARIANTS)
    names = [v.strip() for text in values for v in text.split(",") if v.strip()]
    return list(dict.fromkeys(names))


def _command(args: argparse.Namespace, variants: list[str]) -> str:
    """The command line that reproduces this run (recorded with the results)."""
    parts = ["python -m pipeline preflight", "--device", args.device, "--variant", ",".join(variants)]
    for assignment in args.overrides:
        parts += ["--set", assignment]
    defaults = PreflightOptions()
    if args.calib_samples != defaults.calib_samples:
        parts += ["--calib-samples", str(args.calib_samples)]
    if args.parity_samples != defaults.parity_samples:
        parts += ["--parity-samples", str(args.parity_samples)]
    if args.in_process:
        parts.append("--in-process")
    return " ".join(parts[:1] + [_quote(p) for p in parts[1:]])


def _quote(word: str) -> str:
    """Shell quoting that stays readable for ``key='8.4'`` (double quotes where single quotes are inside)."""
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def cmd_preflight(args: argparse.Namespace) -> int:
    """Run the pre-flight, print the table, return 0 when every step of every variant passed, else 1."""
    from pipeline.config import load_config

    for assignment in args.overrides:
        section = assignment.partition("=")[0].split(".")[0]
        if section not in SETTABLE_SECTIONS:
            raise ConfigError(
                f"--set {assignment!r}: preflight takes {', '.join(SETTABLE_SECTIONS)} settings; the model is the "
                "registered variant (--variant)"
            )
    for name in ("calib_samples", "parity_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = load_config(None, args.overrides, device=args.device)
    options = PreflightOptions(
        calib_samples=args.calib_samples,
        parity_samples=args.parity_samples,
        keep_onnx=args.keep_onnx,
        timeout_s=args.timeout or None,
        max_rss_gb=args.max_rss_gb,
        isolate=not args.in_process,
    )
    variants = _variants(args.variant)
    results = preflight(cfg, variants, args.out, options, command=_command(args, variants))
    print(format_table(results))
    for res in results:
        print(f"{res['variant']}: {res['status']} -> {Path(args.out) / cfg.device.name / res['variant'] / RESULT_MD}")
    bad = failures(results)
    if bad:
        print(f"preflight FAILED for {cfg.device.name}:", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
