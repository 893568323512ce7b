"""How the project's command lines log: one format, and toolchain chatter kept at WARNING.

Usage: ``setup_logging("INFO")`` at the start of a command's ``main`` (``python -m pipeline``, ``pipeline.train``,
``pipeline.ablations``, ``pipeline.backbones``); a pre-flight worker process raises :data:`CHATTY_LOGGERS` itself.
"""

from __future__ import annotations

import logging

# Toolchain loggers whose INFO lines describe their own graph passes (hundreds per export), not the pipeline's work:
# at INFO they are raised to WARNING; ``--log-level DEBUG`` shows them.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir")


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (a ``logging`` level name) with time, level and logger name."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if getattr(logging, level) > logging.DEBUG:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(max(getattr(logging, level), logging.WARNING))
