"""Exporters by name: one call signature, one registry, read by ``geta export`` and ``geta compress``.

An exporter is a function with the uniform signature `ExportFunction`::

    def write(model, path, *, example_inputs=None, tokenizer=None, **options) -> info

and an `Exporter` record that says what it needs (example inputs, a Hugging Face model, a
tokenizer folder), what it writes (a file or a folder) and how to tell the user about the
result. `register_exporter` adds one; ``geta export --format`` offers every registered name,
and a ``geta compress`` run writes each one with a ``run_file``. The built-in formats
(onnx, packed, hf, gguf) are registered in `geta.export.formats`.

>>> from pathlib import Path
>>> def text(model, path, *, example_inputs=None, tokenizer=None, **options):
...     Path(path).write_text(repr(model))
...     return {"path": str(path)}
>>> entry = register_exporter("doc-text", text, help="the model's repr as text")
>>> get_exporter("doc-text") is entry, entry.folder
(True, False)
>>> unregister_exporter("doc-text")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from geta.errors import ExportError

__all__ = [
    "MODEL_KINDS",
    "ExportFunction",
    "Exporter",
    "export",
    "exporter_names",
    "exporters",
    "get_exporter",
    "register_exporter",
    "unregister_exporter",
]

MODEL_KINDS = ("any", "hf", "hf-causal-lm")


class ExportFunction(Protocol):
    """The one signature of an exporter: write ``model`` to ``path``, return what was written.

    ``example_inputs``: what the model is called with (required where
    `Exporter.needs_example_inputs`); ``tokenizer``: a tokenizer to embed (a folder for
    GGUF, an object with ``save_pretrained`` for a Hugging Face folder); ``options``: the
    format's own keywords, named in `Exporter.options`. The returned info is a dataclass or
    has ``to_dict()`` (a run's report.json records it). Failures raise `geta.ExportError`.
    """

    def __call__(
        self,
        model: nn.Module,
        path: str | Path,
        *,
        example_inputs: Any = None,
        tokenizer: Any = None,
        **options: Any,
    ) -> Any: ...


@dataclass(frozen=True)
class Exporter:
    """One registered format: its writer and the facts the CLI and the runs read from it."""

    name: str  # the --format value
    write: Callable[..., Any]  # an `ExportFunction`
    help: str  # a few words for ``geta export --help``
    folder: bool = False  # writes a folder (--out must be new or empty) instead of one file
    needs_example_inputs: bool = False  # the CLI passes the run's inputs (in export form)
    # "any": any module; "hf": the transformers PreTrainedModel inside the run's model is passed;
    # "hf-causal-lm": the run's model is passed as is and must hold a causal LM
    model_kind: str = "any"
    tokenizer_folder: bool = False  # reads ``geta export --tokenizer DIR`` (the folder is passed)
    options: tuple[str, ...] = ()  # further keywords ``write`` accepts (e.g. "plain")
    title: str = ""  # how messages name the format, e.g. "ONNX" [the name]
    requires: str = ""  # optional packages, named when an import fails (e.g. "the gguf package")
    extra: str = ""  # the pip extra that installs them (``torch-geta[EXTRA]``)
    errors_name_format: bool = False  # the CLI prefixes the exporter's errors with --format NAME
    run_file: str | None = None  # its file or folder in a ``geta compress`` run; None: not written
    run_key: str = ""  # its key in a run's report.json "exports" [the name]
    always_in_runs: bool = False  # written even with --no-export (model.geta: runs rebuild from it)
    describe: Callable[[Any, Path, dict[str, Any]], list[str]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """The name messages use: `title`, else `name`."""
        return self.title or self.name

    @property
    def report_key(self) -> str:
        """The key of this format in a run's report.json "exports"."""
        return self.run_key or self.name

    def summary(self, info: Any, path: Path, used: dict[str, Any]) -> list[str]:
        """The lines the CLI prints after writing ``path`` (``used``: the keywords passed)."""
        if self.describe is not None:
            return self.describe(info, path, used)
        return [f"wrote {path}"]


_REGISTRY: dict[str, Exporter] = {}


def register_exporter(name: str, write: Callable[..., Any], *, help: str, **facts: Any) -> Exporter:
    """Register ``write`` (an `ExportFunction`) as format ``name`` and return its `Exporter`.

    ``facts`` are the other `Exporter` fields as keywords. A name already registered raises
    `ExportError`: unregister it first to replace it.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ExportError(f"register_exporter: name={name!r} must be letters, digits, '-' or '_'")
    if name in _REGISTRY:
        raise ExportError(f"register_exporter: an exporter named {name!r} is already registered")
    entry = Exporter(name=name, write=write, help=help, **facts)
    if entry.model_kind not in MODEL_KINDS:
        raise ExportError(f"register_exporter: model_kind={entry.model_kind!r}; allowed: {MODEL_KINDS}")
    _REGISTRY[name] = entry
    return entry


def unregister_exporter(name: str) -> None:
    """Remove format ``name`` (a test's or a plugin's); an unknown name is ignored."""
    _REGISTRY.pop(name, None)


def exporters() -> list[Exporter]:
    """Every registered exporter, built-ins first, in registration order."""
    return list(_REGISTRY.values())


def exporter_names() -> tuple[str, ...]:
    """The registered format names (``geta export --format`` choices)."""
    return tuple(e.name for e in exporters())


def get_exporter(name: str) -> Exporter:
    """The exporter registered as ``name``; `ExportError` naming the known ones otherwise."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ExportError(f"format={name!r} is not a registered exporter; known: {', '.join(_REGISTRY)}")
    return entry


def export(
    name: str,
    model: nn.Module,
    path: str | Path,
    *,
    example_inputs: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> Any:
    """Write ``model`` to ``path`` with the exporter ``name``; its info.

    >>> import torch, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     info = export("packed", torch.nn.Linear(2, 2), os.path.join(d, "m.geta"))
    >>> info.raw_tensors
    2
    """
    entry = get_exporter(name)
    if entry.needs_example_inputs and example_inputs is None:
        raise ExportError(f"format={name!r} needs example_inputs (what the model is called with)")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ExportError(f"format={name!r} takes no option {unknown}; its options: {list(entry.options)}")
    return entry.write(model, path, example_inputs=example_inputs, tokenizer=tokenizer, **options)
