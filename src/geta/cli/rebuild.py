"""Rebuild the models of a finished ``geta compress`` run from data (`geta.cli.artifacts` rules).

`load_run` builds the architecture the run's ``config.yaml`` names (a recipe, ``hf:DIR``, or a
user's ``module:factory`` named again with ``--model``), loads the compressed weights from
``model.geta`` into it and, on request, the dense reference from ``dense.pt``; every file is
checked against ``checksums.json`` before it is read.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geta.cli.artifacts import (
    PACKED,
    RunFiles,
    check_model_code,
    load_module,
    load_state_dict_file,
    run_options,
    verify_run_file,
)
from geta.cli.errors import CliError
from geta.errors import GetaError

__all__ = ["LoadedRun", "load_run", "load_dense_file"]


@dataclass
class LoadedRun:
    """The compressed model of a run, and what rebuilding it needed (to rebuild the dense one)."""

    model: nn.Module
    spec: str
    data: Any  # geta.recipes.DataBundle
    options: Any  # CompressOptions
    run_dir: Path

    def fresh(self) -> nn.Module:
        """A newly built model of the run's architecture (dense, seeded as the run built it)."""
        from geta.recipes import build_model

        return build_model(self.spec, self.data, seed=self.options.seed).eval()

    def dense(self) -> nn.Module | None:
        """The run's dense model (its architecture + the verified dense.pt), or None without dense.pt."""
        if not (self.run_dir / "dense.pt").is_file():
            return None
        verify_run_file(self.run_dir, "dense.pt", tensors=True)
        sd = load_state_dict_file(self.run_dir / "dense.pt")
        if sd is None:
            raise CliError(f"{self.run_dir / 'dense.pt'} is not a state_dict; the run folder is damaged")
        return _load_into(self.fresh(), sd, self.run_dir / "dense.pt", "the run's model")


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CliError(f"{path} is not a state_dict of {what} ({first})") from None
    return model.eval()


def load_run(files: RunFiles, args: argparse.Namespace) -> LoadedRun:
    """The compressed model of the run in ``files.run_dir``, rebuilt from data."""
    from geta.export import load_packed
    from geta.recipes import load_run_data

    run_dir = files.run_dir
    assert run_dir is not None
    opts = run_options(run_dir)
    where = str(run_dir / "config.yaml")
    spec = check_model_code(opts.model, args.model, args.trust_run_code, where, run_dir)
    data = load_run_data(spec, opts.data, seed=opts.seed, seq_len=opts.seq_len)
    run = LoadedRun(nn.Module(), spec, data, opts, run_dir)
    verify_run_file(run_dir, PACKED)
    try:
        run.model = load_packed(run_dir / PACKED, run.fresh()).eval()
    except GetaError as exc:
        raise CliError(str(exc)) from None
    return run


def load_dense_file(path: Path, run: LoadedRun | None, *, trust: bool) -> nn.Module:
    """``--dense FILE``: a state_dict of the run's model (safe), or a pickled module (needs trust)."""
    if not path.is_file():
        raise CliError(f"--dense {path} does not exist; pass a state_dict file (e.g. dense.pt of a run)")
    sd = load_state_dict_file(path)
    if sd is None:
        return load_module(path, trust=trust, flag="--dense")
    if run is None:
        raise CliError(
            f"--dense {path} is a state_dict, which does not say its architecture; pass a run "
            "directory as CHECKPOINT (its model is rebuilt), or a pickled module with --trust-run-code"
        )
    return _load_into(run.fresh(), sd, path, f"the model of {run.run_dir}")
