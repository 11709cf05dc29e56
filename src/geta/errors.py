"""Exceptions raised by geta.

Every error names the offending field or object, the value it got and what to do instead, so
that a user never has to read a stack trace from inside torch to find out what went wrong.
"""

from __future__ import annotations

__all__ = [
    "GetaError",
    "ConfigError",
    "CaptureError",
    "UnsupportedOpError",
    "ConvertError",
    "ExportError",
    "IntegrityError",
]


class GetaError(Exception):
    """Base class of every error geta raises on purpose."""


class ConfigError(GetaError, ValueError):
    """A configuration value is invalid (the message names the field, the value and the fix)."""


class CaptureError(GetaError):
    """The model could not be captured as a graph with the given example inputs."""


class UnsupportedOpError(GetaError):
    """An operation has no handler where one is strictly required."""


class ConvertError(GetaError):
    """A model could not be physically pruned (e.g. a module class without an attribute fixer)."""


class ExportError(GetaError):
    """Writing or reading an exported file failed, or its parity check did not pass.

    The one error type of every exporter (`geta.export`): ONNX, packed, Hugging Face, GGUF,
    bake, and any exporter registered with `geta.export.registry.register_exporter`.
    """


class IntegrityError(ExportError):
    """A file geta wrote no longer matches its recorded checksum, or points outside its folder.

    The message names the file and, where known, the tensor that changed. It is an
    `ExportError` (a damaged export) and so a `GetaError`; run checkpoints raise it too.
    """
