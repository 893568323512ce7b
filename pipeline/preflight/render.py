"""The pre-flight's tables: the step table for the terminal, the Markdown report of one variant, and the failed steps
in one line each."""

from __future__ import annotations

from typing import Any

from pipeline.preflight.plan import STEP_TITLES


def gib(mib: float | None) -> str:
    """MiB as GiB with two decimals for a table cell; ``-`` when unknown."""
    return "-" if mib is None else f"{mib / 1024:.2f}"


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """The cells of the step table: variant, step, status, seconds, peak RSS and RSS at start (GiB), detail."""
    cells = []
    for res in results:
        for row in res["steps"]:
            seconds = row.get("seconds")
            cells.append(
                [
                    res["variant"],
                    STEP_TITLES.get(row["step"], row["step"]),
                    row["status"],
                    "-" if seconds is None else f"{seconds:.1f}",
                    gib(row.get("peak_rss_mb")),
                    gib(row.get("start_rss_mb")),
                    row.get("detail", ""),
                ]
            )
    return cells


HEADER = ["variant", "step", "status", "time (s)", "peak RSS (GiB)", "RSS at start (GiB)", "detail"]


def format_table(results: list[dict[str, Any]], width: int = 110) -> str:
    """A plain-text table for the terminal (details cut to ``width`` characters)."""
    cells = [
        [*row[:-1], row[-1] if len(row[-1]) <= width else row[-1][: width - 3] + "..."] for row in table_rows(results)
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *cells, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of one variant."""
    dev = result["device"]
    lines = [
        f"# Pre-flight: `{result['variant']}` for `{dev['name']}`",
        "",
        f"{dev.get('description', '')}; backend {dev['backend']}, TensorRT {dev.get('trt_version') or '-'}, "
        f"opset {result['export_opset'] or 'exporter default'}. Random weights: the figures say whether the model "
        "exports, quantizes and passes the op check, and what that costs; not how accurate it is.",
        "",
        f"**Status: {result['status']}** in {result['total_seconds']:.0f} s. Machine: {result['machine_line']}.",
        "",
        "| step | status | time (s) | peak RSS (GiB) | RSS at start (GiB) | detail |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in table_rows([result]):
        detail = row[-1].replace("|", "\\|")
        lines.append(f"| {row[1]} | {row[2]} | {row[3]} | {row[4]} | {row[5]} | {detail} |")
    lines += [
        "",
        f"Memory: RSS of the variant's process ({result['isolation']}); {result['memory_method']}. A step's peak "
        "includes what earlier steps left resident (the PyTorch model stays loaded until the parity step).",
        "",
        f"Reproduce: `{result['command'] or 'python -m pipeline preflight'}`",
        "",
    ]
    return "\n".join(lines)


def failures(results: list[dict[str, Any]]) -> list[str]:
    """One line per failed or killed step: ``variant: step: reason``."""
    return [
        f"{res['variant']}: {STEP_TITLES.get(row['step'], row['step'])}: {row.get('detail', '')}"
        for res in results
        for row in res["steps"]
        if row["status"] in ("failed", "killed")
    ]
