"""The project's error hierarchy. Every message names the bad value and what was expected.

Usage: ``raise DataError(f"refs file {path} not found; expected the REFER layout ...")``.
This module imports only the standard library, so runtimes and the deploy bundle may use it without torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PipelineError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A configuration key, type or value is not valid."""


class DataError(PipelineError, ValueError):
    """A data set file, id, image or split is missing, corrupt or inconsistent."""


class CheckpointError(PipelineError, ValueError):
    """A checkpoint is truncated, corrupt, or belongs to another variant or config."""


class ArtifactError(PipelineError, ValueError):
    """An exported artifact (ONNX, IR, engine, bundle) is missing, corrupt, or of another model."""


class StageError(PipelineError, RuntimeError):
    """A pipeline stage failed, or a gate (accuracy budget) did not hold."""


class RuntimeUnavailable(PipelineError, RuntimeError):
    """An inference backend cannot run here; the message says why and how to install it."""


def closest(name: str, valid: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or ``""`` when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def choice_error(
    kind: str, value: object, valid: Iterable[str], cls: type[PipelineError] = ConfigError
) -> PipelineError:
    """Build an error for a value outside a named set, listing the set and suggesting the closest entry."""
    valid = sorted(str(v) for v in valid)
    return cls(f"unknown {kind} {value!r}{closest(str(value), valid)}; valid: {', '.join(valid)}")
