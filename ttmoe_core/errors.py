"""The engine's errors: one family.

Every error the engine raises on purpose derives from ``TTMoEError``, so the app and the CLI catch
one class and show its message; anything else that escapes is a bug. Each class also derives from
the built-in error callers caught before the family existed (``ValueError`` for bad inputs and
files, ``RuntimeError`` for runs that stop), so ``except ValueError`` keeps working.

May import: nothing (the lowest layer).
"""

from __future__ import annotations


class TTMoEError(Exception):
    """Base class of every error the engine raises on purpose; the message says what to do."""


# ------------------------------------------------------------------ files (files/)
class StoreError(TTMoEError, ValueError):
    """A file or folder of the workspace is missing, malformed, unsafe, or does not fit."""


class SchemaError(StoreError):
    """A JSON file that does not follow its schema; the message names the file and the field."""


class NameRuleError(TTMoEError, ValueError):
    """A name that breaks the rule, or a path that leaves its root."""


# ------------------------------------------------------------------ data and base model
class DataError(TTMoEError, ValueError):
    """Bad or missing task data; the message says what was wrong and how to fix it."""


class ModelError(TTMoEError, ValueError):
    """A model that cannot be resolved, pulled or converted; the message says what to do."""


class BackboneError(TTMoEError, ValueError):
    """A base model could not be loaded or does not match what an expert was trained on."""


# ------------------------------------------------------------------ experts and training
class ConfigError(TTMoEError, ValueError):
    """An expert configuration value is invalid."""


class TrainingError(TTMoEError, RuntimeError):
    """Training stopped (NaN loss, cancelled)."""


class CheckpointError(TTMoEError, ValueError):
    """A checkpoint cannot be read or belongs to another run."""


# ------------------------------------------------------------------ routing
class RouterError(TTMoEError, ValueError):
    """A router configuration or its inputs are invalid."""


class GrowthError(TTMoEError, ValueError):
    """The router cannot be grown (no penultimate layer found, empty rows)."""


class OpenWorldError(TTMoEError, ValueError):
    """Bad inputs to the out-of-pool detector (shapes, empty sets, unknown components)."""


# ------------------------------------------------------------------ mixture, baselines, services
class MoEError(TTMoEError, ValueError):
    """Bad input to the mixture, or experts that cannot be pooled together."""


class PoolFitError(TTMoEError, ValueError):
    """Calibration or growth cannot run (no router, no outside families, no replay rows)."""


class FusionError(TTMoEError, ValueError):
    """The adapters cannot be fused (wrong method, base model, or missing tensors)."""


class WorkspaceError(StoreError):
    """A name that breaks the rule, a path that leaves the workspace, or a folder that may not be
    written or removed."""


class ReportError(TTMoEError, RuntimeError):
    """The report cannot run (missing data) or a check failed (outputs not equal)."""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when the message is empty): how the
    app, the CLI and the job runner show an error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


__all__ = ["BackboneError", "CheckpointError", "ConfigError", "DataError", "FusionError",
           "GrowthError", "ModelError", "MoEError", "NameRuleError", "OpenWorldError",
           "PoolFitError", "ReportError", "RouterError", "SchemaError", "StoreError",
           "TTMoEError", "TrainingError", "WorkspaceError", "one_line"]
