"""The results of ``geta compress``: evaluate, measure, export and publish them atomically.

Everything is written into a staging directory next to ``OUT`` and swapped into place at the
end, so a run that fails half-way never leaves a half-written folder that looks like a result.
The run's checkpoint (``OUT/.checkpoint``) is not carried over: a finished run needs none.
A run that dies inside the swap is completed (or rolled back) by the next run on the same
``OUT`` before it looks at the folder (`recover_publish`), so ``--resume`` always finds it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import geta
from geta.cli.checkpoint import CHECKPOINT_DIR, state_path, write_run_checksums
from geta.cli.errors import CliError
from geta.cli.exporting import hf_model, write_format
from geta.cli.job import JobResult
from geta.cli.plots import write_plots
from geta.cli.progress import summary_table
from geta.cli.runlock import holder
from geta.cli.widths import kept_fractions, width_text
from geta.export.registry import exporters
from geta.plan import QuantTarget
from geta.recipes import Task, build_model, evaluate

__all__ = [
    "RunStatus",
    "absolute_paths",
    "check_out_dir",
    "check_out_path",
    "kept_fractions",
    "publish",
    "quantizer_bits",
    "recover_publish",
    "run_status",
    "write_results",
]


class RunStatus(enum.Enum):
    """What an ``--out`` directory holds."""

    NEW = "new"  # nothing there (missing or empty)
    INTERRUPTED = "interrupted"  # a checkpoint newer than any result: resumable
    FINISHED = "finished"  # a report.json and no newer checkpoint
    FOREIGN = "foreign"  # files that are not a geta run
    RUNNING = "running"  # another process holds the run's lock (`geta.cli.runlock`)


def run_status(out: Path, *, locked: bool = False) -> RunStatus:
    """Classify ``out``; a file is `RunStatus.FOREIGN` too.

    A folder whose lock another process holds is `RunStatus.RUNNING` (never "interrupted");
    ``locked=True`` says the caller holds the lock itself, so the probe is skipped.
    """
    if not locked and holder(out) is not None:
        return RunStatus.RUNNING
    if not out.exists():
        return RunStatus.NEW
    if not out.is_dir():
        return RunStatus.FOREIGN
    state, report = state_path(out), out / "report.json"
    if state.is_file() and not (report.is_file() and report.stat().st_mtime_ns >= state.stat().st_mtime_ns):
        return RunStatus.INTERRUPTED  # (a run before geta 0.1.1 kept its checkpoint after finishing)
    if report.is_file():
        return RunStatus.FINISHED
    others = [p for p in out.iterdir() if p.name != CHECKPOINT_DIR]  # (a checkpoint folder, no state)
    return RunStatus.FOREIGN if others else RunStatus.NEW


def check_out_dir(out: Path, status: RunStatus, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an ``--out`` whose contents the run would lose without ``--resume``/``--overwrite``.

    A file or a directory of other files is always refused; a run there needs ``--resume``
    (continue it) or ``--overwrite`` (start over); ``--resume`` needs an interrupted run (a
    finished one is reported complete by the caller).
    """
    if status is RunStatus.RUNNING:
        raise CliError(f"--out {out} is in use by another geta compress ({holder(out)}); pass another --out")
    if status is RunStatus.FOREIGN:
        if not out.is_dir():
            raise CliError(f"--out {out} is a file; pass a directory path (it is created if missing)")
        raise CliError(
            f"--out {out} is a non-empty directory that holds no geta run; pass a new or empty "
            "directory so that nothing of yours is replaced"
        )
    if resume and status is RunStatus.NEW:
        raise CliError(
            f"no checkpoint to resume at {state_path(out)}; run without --resume to start a new run"
        )
    if resume or overwrite or status is RunStatus.NEW:
        return
    if status is RunStatus.INTERRUPTED:
        raise CliError(
            f"--out {out} holds an interrupted run; pass --resume to continue it or --overwrite to "
            "start over (its checkpoint is replaced), or choose another --out"
        )
    raise CliError(
        f"--out {out} holds a finished run; pass --overwrite to replace it, or choose another --out"
    )


def check_out_path(out: Path) -> None:
    """Check that ``--out`` can be written before any work: not a file, its parent a writable folder.

    Missing parents are created (``--out runs/a`` makes ``runs``); an existing ``out`` must be
    a folder this process can write into (tried with a probe file).
    """
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; pass a directory path (it is created if missing)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"--out {out}: its parent folder {out.parent} cannot be created ({exc.strerror or exc}); "
            "pass an --out inside a folder you can write to"
        ) from None
    for folder in (out.parent, out) if out.is_dir() else (out.parent,):
        probe = folder / f".geta-write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CliError(
                f"--out {out}: cannot write into {folder} ({exc.strerror or exc}); "
                "pass an --out inside a folder you can write to"
            ) from None


def _side(accuracy: float, loss: float, rep: Any) -> dict[str, Any]:
    return {
        "accuracy": accuracy,
        "loss": loss,
        "macs": rep.macs,
        "bops": rep.bops,
        "params": rep.params,
        "size_bytes": rep.size_bits / 8,
    }


def quantizer_bits(plan: geta.Plan) -> dict[str, dict[str, int]]:
    """``{"weight": {name: bits}, "input": {name: bits}}``: rounded bits of every bound quantizer.

    The kind is the binding's target and the name its `geta.Plan.quantizers` key
    (``"conv1.weight"``, ``"attn.in_proj_weight"``, ``"conv1.input"``).
    """
    from geta.reporting import rounded_bits

    out: dict[str, dict[str, int]] = {target.value: {} for target in QuantTarget}
    for b in plan.bindings:
        out[b.target.value][b.name] = rounded_bits(b.quantizer)
    return out


def _measure(result: JobResult, small: nn.Module, dense: nn.Module) -> dict[str, Any]:
    """report.json without exports and timing: accuracies, costs, bits, layers, history.

    ``small`` is evaluated on the run's device, then both models are measured on the CPU.
    """
    state, data = result.state, result.data
    metrics = evaluate(small.to(result.device), data, batch_size=256, device=result.device)
    small.cpu()
    example = data.example(1)
    dense_rep = geta.report(dense, example)
    rep = geta.report(small, example, dense=dense_rep)
    kept = kept_fractions(dense, small)
    layers = [{**layer, **kept.get(layer["name"], {})} for layer in rep.to_dict()["layers"]]
    assert state.dense is not None
    return {
        "geta_version": geta.__version__, "task": data.task.value, "data": data.name,
        "headline": rep.headline(), "float_layers": [r.name for r in rep.float_layers],
        "options": state.options.to_dict(), "training": dataclasses.asdict(state.options.training()),
        "stage_epochs": list(state.options.stage_epochs()),
        "dense": _side(state.dense["accuracy"], state.dense["loss"], dense_rep),
        "compressed": {**_side(metrics.accuracy, metrics.loss, rep), "relative_size": rep.relative_size},
        "relative_bops": rep.relative_bops, "relative_bops_weight_only": rep.relative_bops_weight_only,
        "group_sparsity": result.plan.group_sparsity(), "bits": quantizer_bits(result.plan), "layers": layers,
        "unknown_ops": rep.unknown_ops, "history": state.history, "train_seconds": state.seconds,
        "_markdown": rep.to_markdown(widths={name: width_text(k) for name, k in kept.items()}),
    }  # fmt: skip


def _export(call: Callable[[], tuple[Any, Any]]) -> dict[str, Any]:
    """Run one export (`write_format`); a failure is recorded (the run's other results still count)."""
    try:
        info, _ = call()
    except ImportError as exc:
        return {"error": f"skipped, a dependency is missing: {exc}"}
    except Exception as exc:  # an export is an extra: record why it failed and go on
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    if hasattr(info, "to_dict"):
        return dict(info.to_dict())
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else {"path": str(info)}


def _write_files(
    staging: Path,
    small: nn.Module,
    dense: nn.Module,
    example: tuple[Any, ...],
    *,
    export: bool,
    plain: bool,
    report: dict[str, Any],
) -> dict[str, Any]:
    """The run's files, then every registered exporter with a ``run_file`` (model.geta always).

    A wrapped Hugging Face model is exported as itself (input_ids + attention_mask -> logits);
    an ``hf`` format is written only for a Hugging Face model (with ``plain``, i.e.
    --uniform-layers, it refuses layers of different sizes); a failed export (e.g. an ONNX
    parity check) writes no file and its error goes into the report.
    """
    torch.save(small, staging / "compressed.pt")  # for your own torch.load; geta never reads it
    torch.save(example, staging / "inputs.pt")
    torch.save(dense.state_dict(), staging / "dense.pt")
    wanted = [e for e in exporters() if e.run_file and (export or e.always_in_runs)]
    wanted.sort(key=lambda e: not e.always_in_runs)  # model.geta first: report/export rebuild from it
    exports: dict[str, dict[str, Any]] = {}
    for entry in wanted:
        if entry.model_kind != "any" and hf_model(small) is None:
            continue
        file = staging / str(entry.run_file)
        call = functools.partial(write_format, entry, small, file, inputs=example, report=report, plain=plain)
        info = _export(call)
        if "error" not in info and file.exists():
            size = (
                sum(f.stat().st_size for f in file.rglob("*") if f.is_file())
                if file.is_dir()
                else file.stat().st_size
            )
            info["path"], info["bytes"] = file.name, size
        exports[entry.report_key] = info
    return exports


def _markdown(report: dict[str, Any], compressed_md: str) -> str:
    o = report["options"]
    lines = [f"# geta compress: {o['model']} on {report['data']}", "",
             f"sparsity {o['sparsity']}, weight bits {o['weight_bits']}, activation bits {o['act_bits']}, "
             f"stage epochs (warm-up, projection, joint, cool-down) {report['stage_epochs']}", "",
             "```", summary_table(report), "```", "", "## Compressed model, per layer", "", compressed_md, "",
             "## Exports", ""]  # fmt: skip
    for name, info in report["exports"].items():
        lines.append(
            f"- {name}: "
            + (info["error"] if "error" in info else f"{info.get('path')} ({info.get('bytes', 0):,} bytes)")
        )
    return "\n".join(lines) + "\n"


def write_results(
    result: JobResult,
    staging: Path,
    *,
    plots: bool = True,
    export: bool = True,
    wall_clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Convert, evaluate, report, export and plot into ``staging``; return the report dict.

    ``wall_clock()`` (the run's wall time so far, over all its processes) is read last and
    recorded as ``wall_seconds``, next to the training time of all of them (``train_seconds``).
    """
    staging.mkdir(parents=True)
    result.model.eval()
    small = geta.convert(result.model, result.plan).eval()
    o, data = result.state.options, result.data
    dense = build_model(o.model, data, seed=o.seed)  # on the CPU, like everything written out
    assert result.state.dense is not None
    dense.load_state_dict(result.state.dense["state"])
    dense.eval()
    report = _measure(result, small, dense)
    compressed_md = report.pop("_markdown")
    if data.task is Task.LM:
        report["dense"]["perplexity"] = float(torch.tensor(report["dense"]["loss"]).exp())
        report["compressed"]["perplexity"] = float(torch.tensor(report["compressed"]["loss"]).exp())
    report["exports"] = _write_files(
        staging, small, dense, data.example(1), export=export, plain=o.uniform_layers, report=report
    )
    report["plots"] = write_plots(report, staging) if plots else []
    with (staging / "config.yaml").open("w", encoding="utf-8") as f:
        import yaml

        yaml.safe_dump(absolute_paths(o.to_dict()), f, sort_keys=False)
    report["wall_seconds"] = wall_clock() if wall_clock is not None else None
    (staging / "report.md").write_text(_markdown(report, compressed_md), encoding="utf-8")
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_run_checksums(staging, dense.state_dict())
    return report


_PATH_DATA = ("cifar10", "imagefolder", "text", "jsonl")  # data sets whose spec names a path


def absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the paths they name made absolute (``~`` expanded), so that the run's
    ``config.yaml`` means the same files from any working directory: ``hf:DIR``, the data's
    ``NAME:PATH`` (``jsonl:FILE:FIELD`` keeps its field) and ``dense_checkpoint``.

    >>> import os
    >>> absolute_paths({"model": "hf:ckpt", "data": "jsonl:a.jsonl:body"})["data"] == (
    ...     "jsonl:" + os.path.join(os.getcwd(), "a.jsonl") + ":body")
    True
    """

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().absolute())

    out = dict(options)
    model, data = str(out.get("model", "")), str(out.get("data", ""))
    if model.startswith("hf:") and model[3:]:
        out["model"] = "hf:" + absolute(model[3:])
    name, _, path = data.partition(":")
    if name in _PATH_DATA and path:
        field = ""
        if name == "jsonl" and not Path(path).expanduser().is_file() and ":" in path:  # FILE:FIELD
            path, field = path.rpartition(":")[0], ":" + path.rpartition(":")[2]
        out["data"] = f"{name}:{absolute(path)}{field}"
    if out.get("dense_checkpoint"):
        out["dense_checkpoint"] = absolute(str(out["dense_checkpoint"]))
    return out


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # (one function, so that tests can crash the publishing between steps)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def publish(staging: Path, out: Path) -> None:
    """Swap ``staging`` (complete: its report.json is written last) into place as ``out``.

    Three steps: ``out`` -> ``.OUT.old-PID``, ``staging`` -> ``out``, delete the old folder
    (its checkpoint goes with it). Whatever step a crash interrupts, `recover_publish` finishes
    the swap on the next run, so no work is lost.
    """
    if not out.exists():
        _move(staging, out)
        return
    old = out.parent / f".{out.name}.old-{staging.name.rpartition('-')[2]}"
    _move(out, old)
    _move(staging, out)
    _remove(old)


def _leftovers(out: Path, kind: str) -> list[Path]:
    """``.OUT.KIND-PID`` folders beside ``out`` (``kind`` is ``staging`` or ``old``)."""
    prefix = f".{out.name}.{kind}-"
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))


def recover_publish(out: Path) -> str | None:
    """Finish what a run that died inside `publish` left beside ``out``; say what was done.

    Call it holding the run's lock (no other run is publishing). When ``out`` is missing, the
    run died between moving ``out`` away and moving its staging folder in: a complete staging
    folder is moved in (the run is finished), else the old folder comes back (its checkpoint
    resumes). Then every leftover staging and old folder is deleted: the results they held are
    in ``out`` or are recomputed from its checkpoint by ``--resume``.
    """
    note = None
    olds = _leftovers(out, "old")
    if not out.exists() and olds:
        for old in reversed(olds):
            staging = out.parent / f".{out.name}.staging-{old.name.rpartition('-')[2]}"
            if (staging / "report.json").is_file():
                _move(staging, out)
                note = f"completed the publishing of {out} that an earlier run left unfinished"
                break
        else:
            _move(olds[-1], out)
            note = f"restored {out} from {olds[-1].name}, left by a run that stopped while publishing"
    for leftover in _leftovers(out, "old") + _leftovers(out, "staging"):
        _remove(leftover)
    return note
