"""Architecture coverage: does geta prune-and-quantize the models people bring?

    python -m bench.coverage [--sources torchvision,timm,hf] [--only NAME ...] [--large]

For every model of `bench.coverage_models` (torchvision builders, a timm set, tiny Hugging Face
families; random weights, no downloads) one process builds the model and runs
`geta.testing.coverage.check_model`: prepare with weight and activation quantizers, zero half the
prunable units, convert, and compare with the zeroed model (pass: relative error <= 1e-4 and
fewer parameters). Each model runs alone, forked from this process (torch and the model
libraries are imported once, here), under a time limit; a model that runs out of time or
memory is recorded as such.

Results go to runs/coverage.json (one record per model, every frozen group's reason included)
and docs/coverage.md (`bench.coverage_table`). ``--only`` re-runs some models and keeps the
other records of the JSON file, so a fix can be checked without the whole run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import sys
import time
import warnings
from collections.abc import Iterator
from multiprocessing import connection
from typing import Any

import torch

from bench.coverage_models import SOURCES, Spec, specs
from bench.coverage_table import render

ROOT = pathlib.Path(__file__).resolve().parent.parent
JSON = ROOT / "runs" / "coverage.json"
LOG = ROOT / "runs" / "coverage.log"
DOC = ROOT / "docs" / "coverage.md"


def _child(spec: Spec, conn: Any, threads: int) -> None:
    """Build and check one model; send its record (runs in the forked process)."""
    from geta.testing.coverage import check_model

    log = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(log, 1)
    os.dup2(log, 2)
    print(f"=== {spec.source}/{spec.name}", flush=True)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    record: dict[str, Any] = {"source": spec.source, "name": spec.name}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model, inputs = spec.build()
        except Exception as err:
            record.update(passed=False, stage="build", error=f"{type(err).__name__}: {str(err)[:300]}")
        else:
            record["build_seconds"] = time.perf_counter() - start
            record.update(dataclasses.asdict(check_model(model, inputs)))
    record["warnings"] = sorted({str(w.message)[:200] for w in caught if "geta" in (w.filename or "")})
    record["seconds_total"] = time.perf_counter() - start
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send(record)
    conn.close()


@dataclasses.dataclass
class _Running:
    """One model being checked in its forked process."""

    spec: Spec
    proc: Any  # multiprocessing Process
    conn: Any  # the receiving end of its pipe
    start: float

    def finish(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """Its record, or what happened to the process when it sent none."""
        base: dict[str, Any] = {"source": self.spec.source, "name": self.spec.name, "passed": False}
        elapsed = time.perf_counter() - self.start
        if record is None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
            why = f"no result within {self.spec.timeout:.0f} s (time limit)"
            return {**base, "stage": "timeout", "error": why, "seconds_total": elapsed}
        self.proc.join(30)
        if record is not None:
            return record
        code = self.proc.exitcode
        why = (
            f"killed by signal {-code} (out of memory?)" if code is not None and code < 0 else f"exit {code}"
        )
        return {**base, "stage": "crashed", "error": why, "seconds_total": elapsed}


def _start(spec: Spec, threads: int) -> _Running:
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, send, threads), daemon=True)
    proc.start()
    send.close()
    return _Running(spec, proc, recv, time.perf_counter())


def run_all(todo: list[Spec], jobs: int, threads: int) -> Iterator[dict[str, Any]]:
    """Check every spec, ``jobs`` processes at a time; yield records as models finish."""
    pending = list(todo)
    running: list[_Running] = []
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            if spec.skip:
                yield {"source": spec.source, "name": spec.name, "passed": False, "stage": "skipped",
                       "error": spec.skip}  # fmt: skip
                continue
            running.append(_start(spec, threads))
        if not running:
            continue
        now = time.perf_counter()
        wait_s = max(0.0, min(r.start + r.spec.timeout - now for r in running))
        ready = set(connection.wait([r.conn for r in running], timeout=wait_s))
        for r in list(running):
            late = time.perf_counter() > r.start + r.spec.timeout
            if r.conn in ready or late:
                record = None
                try:
                    if r.conn in ready:
                        record = r.conn.recv()
                except EOFError:  # the process died before sending
                    pass
                running.remove(r)
                yield r.finish(record)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "timm", "transformers"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    return out


def _preload(sources: tuple[str, ...]) -> None:
    """Import the model libraries and run torch.export once, before forking (children start warm).

    The warm-up runs on one thread with tensors too small for a parallel region, so that no
    OpenMP pool exists yet when the children fork.
    """
    from geta.testing.coverage import check_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    check_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), (torch.randn(2, 4),))
    torch.set_num_threads(threads)

    if any(s.startswith("torchvision") for s in sources) or "timm" in sources:
        import torchvision  # noqa: F401
    if "timm" in sources:
        import timm  # noqa: F401
    if "hf" in sources:
        import transformers  # noqa: F401
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated of {SOURCES}")
    parser.add_argument("--only", nargs="*", default=None, help="model names to (re-)run")
    parser.add_argument("--large", action="store_true", help="include the ~640 M-parameter builders")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at the same time")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc from the JSON file")
    args = parser.parse_args(argv)
    if args.render:
        DOC.write_text(render(json.loads(JSON.read_text())))
        return
    sources = tuple(s for s in args.sources.split(",") if s)
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown sources {sorted(unknown)}; pick from {SOURCES}")
    _preload(sources)
    todo = [s for s in specs(sources, large=args.large) if args.only is None or s.name in args.only]
    partial = args.only is not None or set(sources) != set(SOURCES)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    JSON.parent.mkdir(exist_ok=True)
    previous = json.loads(JSON.read_text()) if partial and JSON.exists() else {"models": []}
    records = {f"{r['source']}/{r['name']}": r for r in previous["models"]}  # a subset run keeps the rest
    LOG.write_text("")
    start = time.perf_counter()
    for i, record in enumerate(run_all(todo, args.jobs, threads), 1):
        records[f"{record['source']}/{record['name']}"] = record
        print(f"[{i}/{len(todo)}] {_line(record)}", flush=True)
        _save(records, previous, time.perf_counter() - start)
    order = {f"{s.source}/{s.name}": k for k, s in enumerate(specs(SOURCES, large=True))}
    records = dict(sorted(records.items(), key=lambda kv: order.get(kv[0], len(order))))
    data = _save(records, previous, time.perf_counter() - start)
    DOC.write_text(render(data))
    print(f"wrote {DOC.relative_to(ROOT)} ({time.perf_counter() - start:.0f} s)")


def _line(record: dict[str, Any]) -> str:
    state = "pass" if record.get("passed") else record.get("stage")
    share = record.get("prunable_share")
    return (
        f"{record['source']}/{record['name']}: {state}"
        + (f", share {share:.0%}" if share is not None else "")
        + f", {record.get('seconds_total', 0):.0f} s"
        + (f" ({record['error']})" if record.get("error") and not record.get("passed") else "")
    )


def _save(records: dict[str, dict[str, Any]], previous: dict[str, Any], wall: float) -> dict[str, Any]:
    """Write the JSON file; a subset run keeps the wall time of the full run it updates."""
    data = {
        "versions": {**previous.get("versions", {}), **_versions()},  # a subset run imports fewer
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": previous.get("wall_seconds", wall),
        **({"note": previous["note"]} if "note" in previous else {}),
        "models": list(records.values()),
    }
    JSON.write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
