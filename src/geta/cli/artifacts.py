"""Loading what ``geta compress`` wrote, as data only: nothing in a run folder runs code.

A run directory is rebuilt from data: the options from ``config.yaml`` (YAML, safe-loaded), the
architecture from the code the options name, the compressed weights from ``model.geta``
(`geta.export.load_packed`: JSON manifest + raw bytes), the dense reference from ``dense.pt``
and the example inputs from ``inputs.pt`` (both ``torch.load(weights_only=True)``). Every file
is checked against the run's ``checksums.json`` first (`geta.integrity`).

The architecture comes from geta's own recipes (``resnet``, ``llama``, ...), a Hugging Face
folder (``hf:DIR``, no remote code) or, for a run of a user's ``module:factory``, from code the
user names again on the command line (``--model module:factory``); ``--trust-run-code`` accepts
the run's own ``module:factory`` instead (with a warning). ``compressed.pt`` (a pickled module)
is never read from a run folder; a module ``.pt`` file given directly is unpickled only with
``--trust-run-code``, since unpickling can run any code.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geta.cli.checkpoint import CHECKSUMS
from geta.cli.errors import CliError
from geta.errors import GetaError
from geta.integrity import read_sidecar, verify_file

__all__ = [
    "CHECKSUMS",
    "RunFiles",
    "add_checkpoint_argument",
    "load_inputs",
    "load_module",
    "load_state_dict_file",
    "locate",
    "parse_shape",
    "run_options",
    "verify_run_file",
    "warn_trusted",
]

PACKED = "model.geta"


@dataclass(frozen=True)
class RunFiles:
    """The files of one model to report or export."""

    model: Path  # model.geta of a run, or a module .pt file given directly
    inputs: Path | None  # a torch.save'd tuple of example inputs, if known
    run_dir: Path | None  # the ``geta compress`` output directory, if the model came from one


def add_checkpoint_argument(parser: Any) -> None:
    """CHECKPOINT, ``--model`` and ``--trust-run-code`` of ``geta report`` / ``geta export``."""
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="geta compress output directory (or a module .pt file)"
    )
    parser.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="the run's model code, named again for a run of your own module:factory",
    )
    parser.add_argument(
        "--trust-run-code",
        action="store_true",
        help="run code the files name: import the run's module:factory, unpickle a module .pt file",
    )


def warn_trusted(what: str) -> None:
    """The warning ``--trust-run-code`` prints before it runs code from a file."""
    print(f"warning: --trust-run-code: {what}; this runs code from that file", file=sys.stderr)


def locate(path: str) -> RunFiles:
    """A run directory (``model.geta`` + ``inputs.pt``) or a module file (+ a sibling inputs.pt)."""
    p = Path(path).expanduser()
    if p.is_dir():
        model = p / PACKED
        if not model.is_file():
            old = (
                f" (an older run with compressed.pt only: run it again, or, if you made it yourself, "
                f"pass {p / 'compressed.pt'} --trust-run-code)"
            )
            raise CliError(
                f"{p} holds no {PACKED}; pass the --out directory of a finished geta compress run"
                + (old if (p / "compressed.pt").is_file() else "")
            )
        inputs = p / "inputs.pt"
        return RunFiles(model, inputs if inputs.is_file() else None, p)
    if not p.is_file():
        raise CliError(f"checkpoint {p} does not exist; pass a geta compress output directory or a .pt file")
    sibling = p.parent / "inputs.pt"
    return RunFiles(p, sibling if sibling.is_file() else None, None)


def verify_run_file(run_dir: Path, name: str, *, tensors: bool = False) -> None:
    """Check ``run_dir/name`` against the run's checksums.json (no sidecar: an older run, skipped)."""

    def load(path: Path) -> dict[str, torch.Tensor]:
        return dict(torch.load(path, map_location="cpu", weights_only=True))

    try:
        verify_file(run_dir, name, CHECKSUMS, load_tensors=load if tensors else None)
    except GetaError as exc:
        raise CliError(str(exc)) from None


def run_options(run_dir: Path) -> Any:
    """The `CompressOptions` of a run, from its verified ``config.yaml``."""
    import yaml

    from geta.cli.options import CompressOptions

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CliError(
            f"{run_dir} has no config.yaml; pass the --out directory of a finished geta compress run"
        )
    verify_run_file(run_dir, "config.yaml")
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{config} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise CliError(f"{config} must hold a mapping of option: value")
    return CompressOptions.from_mapping(raw, where=lambda k: f"{k!r} in {config}")


def user_code_spec(spec: str) -> bool:
    """Whether a model spec names a user's ``module:factory`` (not a recipe, not ``hf:DIR``)."""
    return ":" in spec and not spec.startswith("hf:")


def check_model_code(spec: str, given: str | None, trust: bool, where: str, folder: Path) -> str:
    """The model spec to build for a run whose options say ``spec`` (module docstring's rules)."""
    if given is not None and given != spec:
        raise CliError(f"--model {given} is not the model of {where} ({spec}); pass --model {spec}")
    if not user_code_spec(spec) or given is not None:
        _refuse_code_in(folder, spec, trust)
        return spec
    if not trust:
        raise CliError(
            f"{where} names your own model code {spec}; geta does not import code a file names: pass "
            f"--model {spec} to run it (your code), or --trust-run-code if you trust the folder"
        )
    warn_trusted(f"importing {spec}, named in {where}")
    return spec


def _refuse_code_in(folder: Path, spec: str, trust: bool) -> None:
    """Refuse a ``module:factory`` whose module would be imported from inside the run folder."""
    if not user_code_spec(spec) or trust:
        return
    top = spec.partition(":")[0].split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin is None and (Path.cwd() / f"{top}.py").is_file():
        origin = (Path.cwd() / f"{top}.py").resolve()  # what load_factory would import from the cwd
    if origin is not None and folder.resolve() in origin.parents:
        raise CliError(
            f"--model {spec}: module {top!r} would be imported from {origin}, inside the run folder; "
            "run geta from another directory, or pass --trust-run-code if you trust the folder"
        )


def load_module(path: Path, *, trust: bool, flag: str = "CHECKPOINT") -> nn.Module:
    """A whole module saved with ``torch.save(module)``: unpickled only with ``trust``."""
    if not trust:
        raise CliError(
            f"{flag} {path} is a pickled file, and unpickling runs whatever code it holds; pass the "
            "run directory instead, or --trust-run-code if you made the file yourself"
        )
    warn_trusted(f"unpickling {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CliError(
            f"{flag} {path} could not be loaded ({type(exc).__name__}); it must be a module saved "
            "with torch.save(model)"
        ) from None
    if not isinstance(obj, nn.Module):
        raise CliError(
            f"{flag} {path} holds a {type(obj).__name__}, not a module; pass a module saved "
            "with torch.save(model), or the run directory"
        )
    return obj.eval()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor] | None:
    """A state_dict file loaded with ``weights_only=True``; None if it is not one (e.g. a module)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> (1, 3, 32, 32)."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise CliError(
            f"--input-shape {text!r} must be positive integers separated by commas, e.g. 1,3,32,32"
        )
    return shape


def load_inputs(files: RunFiles, shape: str | None, dtype: str = "float32") -> tuple[Any, ...]:
    """Example inputs: a random tensor of ``--input-shape`` if given, else the run's inputs.pt."""
    if shape is not None:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise CliError(f"--input-dtype {dtype!r} is not a torch dtype; pass float32 or int64")
        size = parse_shape(shape)
        if dt.is_floating_point:
            return (torch.randn(size, dtype=dt),)
        return (torch.zeros(size, dtype=dt),)
    if files.inputs is None:
        raise CliError(
            f"no example inputs for {files.model}: pass --input-shape (e.g. 1,3,32,32) or keep the "
            "run's inputs.pt next to it"
        )
    if files.run_dir is not None:
        verify_run_file(files.run_dir, files.inputs.name)
    try:
        inputs = torch.load(files.inputs, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(
            f"example inputs {files.inputs} could not be loaded ({type(exc).__name__}); "
            "pass --input-shape instead"
        ) from None
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def has_checksums(run_dir: Path) -> bool:
    """Whether the run records checksums (runs before them are read unchecked)."""
    try:
        return read_sidecar(run_dir, CHECKSUMS) is not None
    except GetaError as exc:
        raise CliError(str(exc)) from None
