"""docs/coverage.md from the records of `bench.coverage`: totals, failures by cause, one row per model."""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from typing import Any

from bench.coverage_models import SOURCES

__all__ = ["render", "failure_cause"]

# Reasons that are not a missing capability: a model's outputs and the channels its norms
# couple are frozen by design (docs/method.md §2.6), a one-channel space cannot shrink.
EXPECTED = (
    "feeds the model output",
    "normalises over these channels",
    "a single channel",
)

_SOURCE_TITLES = {
    "torchvision": "torchvision classification",
    "torchvision-seg": "torchvision segmentation",
    "torchvision-det": "torchvision detection",
    "timm": "timm",
    "hf": "Hugging Face (tiny configs)",
}


def _clean(text: str) -> str:
    """An error without the parts that differ between models (names, sizes, addresses)."""
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    text = re.sub(r"\b([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_\d+\b", r"\1", text)
    text = re.sub(r"\d+", "N", text)
    return text.replace("|", "\\|")[:160]


def _blocking(frozen: dict[str, int]) -> list[tuple[str, int]]:
    return [(r, n) for r, n in frozen.items() if not any(e in r for e in EXPECTED)]


def failure_cause(record: dict[str, Any]) -> str:
    """The op or pattern a failed model is blocked by, worded the same for every model."""
    stage, error = record.get("stage"), record.get("error") or ""
    if stage == "no-removal":
        blocking = _blocking(record.get("frozen", {}))
        return f"nothing prunable: {_clean(blocking[0][0])}" if blocking else "nothing prunable"
    if stage == "prepare" and "GuardOnDataDependentSymNode" in error:  # the guard's text varies
        return "capture (torch.export): a shape that depends on tensor values (GuardOnDataDependentSymNode)"
    if stage == "prepare" and "torch.export could not capture" in error:
        inner = error.split("(", 1)[-1]
        return f"capture (torch.export): {_clean(inner.split(';')[0].rstrip(')'))}"
    return f"{stage}: {_clean(error)}"


def _share(records: list[dict[str, Any]]) -> str:
    shares = [r["prunable_share"] for r in records if r.get("passed")]
    return f"{statistics.median(shares):.0%}" if shares else "–"


NOT_CHECKED = ("skipped", "not-run")  # left out on purpose / no result yet (see the row)


def _totals(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| source | pass | total | skipped | not run | median prunable share (passed) | time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for source, records in groups.items():
        ran = [r for r in records if r.get("stage") not in NOT_CHECKED]
        passed = sum(bool(r.get("passed")) for r in ran)
        skipped = sum(r.get("stage") == "skipped" for r in records)
        seconds = sum(r.get("seconds_total", 0.0) for r in records)
        not_run = len(records) - len(ran) - skipped
        lines.append(
            f"| {_SOURCE_TITLES[source]} | {passed} | {len(ran)} | {skipped} | {not_run} "
            f"| {_share(records)} | {seconds / 60:.1f} min |"
        )
    return lines


def _failures(records: list[dict[str, Any]]) -> list[str]:
    by_cause: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if not r.get("passed") and r.get("stage") not in NOT_CHECKED:
            by_cause[failure_cause(r)].append(f"{r['source']}/{r['name']}")
    if not by_cause:
        return ["None."]
    lines = []
    for cause, names in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{cause}** ({len(names)}): {', '.join(names)}")
    return lines


def _frozen_reasons(records: list[dict[str, Any]]) -> list[str]:
    groups: Counter[str] = Counter()
    models: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for reason, n in r.get("frozen", {}).items():
            key = _clean(reason)
            groups[key] += n
            models[key].add(r["name"])
    lines = ["| reason | groups | models |", "| --- | ---: | ---: |"]
    for reason, n in groups.most_common():
        expected = " (by design)" if any(e in reason for e in EXPECTED) else ""
        lines.append(f"| {reason}{expected} | {n} | {len(models[reason])} |")
    return lines


def _row(r: dict[str, Any]) -> str:
    if r.get("stage") in NOT_CHECKED:
        return f"| {r['name']} | {r['stage']} | | | | | {r.get('error', '')} |"
    state = "pass" if r.get("passed") else f"**{r.get('stage')}**"
    params = r.get("params", 0)
    groups = f"{r.get('prunable_groups', 0)} / {r.get('groups', 0)}" if r.get("groups") else ""
    share = f"{r['prunable_share']:.0%}" if r.get("groups") else ""
    secs = r.get("seconds", {})
    timing = "+".join(f"{secs[k]:.1f}" for k in ("prepare", "convert") if k in secs)
    if r.get("passed"):
        note = "; ".join(f"{_clean(k)} ×{n}" for k, n in _blocking(r.get("frozen", {}))[:2])
    else:
        note = failure_cause(r)
    size = f"{params / 1e6:.1f} M" if params else ""
    return f"| {r['name']} | {state} | {size} | {groups} | {share} | {timing} | {note} |"


LIMITS = """\
## Known limits (triage)

What the frozen-group reasons above come to, and what would lift them:

- **By design** (docs/method.md §2.6): channels a norm normalises over (the residual stream of every
  pre/post-norm transformer, GroupNorm(1, C) in PoolFormer), a model's outputs, the dims inside
  an attention head, the q/k/v selector of a fused projection (the `3` of
  `reshape(B, N, 3, H, hd)`, frozen at its `unbind`/`select`), and the query heads that share
  one key/value head under grouped-query attention (`meets an unsliceable tensor at matmul`
  in eager Llama-style attention: `repeat_kv`'s expand). None of these is removable without
  changing the function.
- **Attention that reshapes by the input width**: `x.reshape(B, N, C)` or
  `C // num_heads` with `C` taken from `x.shape` (torchvision's `shifted_window_attention`
  in Swin/Swin-v2, MaxViT's attention; timm's PVT-v2 and CaiT). The head count cannot follow pruning without
  changing the model's code, so the trial conversion freezes the heads (`removing a unit
  breaks the model's forward`). Attention that reshapes by its own attributes gets a module
  spec with a fixer instead (`geta.ops.modules.ModuleSpec`; `geta.ops.hf`: OPT, BART and its
  copies, Whisper, T5, Phi-3; `geta.ops.timm`: ViT/DeiT `Attention`, Swin `WindowAttention`).
  A class of your own is one `register_module_spec(ModuleSpec(MyAttention, fixer=...))` call
  (`tests/ops/test_ops_modules.py` shows convert, `load_packed` and `baked` reading it).
- **Ops without a handler** are named in the tables (`touches X, an op geta has no handler
  for`); add one in `src/geta/ops/` (see `geta.ops.registry`).
- **Detection models** (all 12 torchvision builders) post-process boxes in eval mode with
  shapes that depend on tensor values (top-k of proposals above a score, NMS); `torch.export`
  cannot capture them (`GuardOnDataDependentSymNode`). Pruning their backbone and heads needs
  a capture of the network without its post-processing (e.g. `model.backbone` alone).
"""


def render(data: dict[str, Any]) -> str:
    """The whole of docs/coverage.md."""
    groups: dict[str, list[dict[str, Any]]] = {s: [] for s in SOURCES}
    for r in data["models"]:
        groups.setdefault(r["source"], []).append(r)
    groups = {s: rs for s, rs in groups.items() if rs}
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    out = [
        "# geta coverage",
        "",
        "Regenerated by `make zoo` (`python -m bench.coverage`); do not edit. "
        f"{data['date']}, {data['machine']}, {versions}; wall time {data['wall_seconds'] / 60:.1f} min.",
        *([f"\n{data['note']}"] if data.get("note") else []),
        "",
        "Each model is built with random weights (no downloads), prepared with weight and activation "
        "quantizers, half of its prunable units are zeroed (`zero_random_groups(plan, 0.5, seed=0)`) "
        "and it is converted. It **passes** when the converted model computes the zeroed model's "
        "outputs (relative error <= 1e-4; float64 where 4-bit activation rounding flips in float32) "
        "and has fewer parameters. The **prunable share** is the fraction of weight elements "
        "(embedding tables and the output head left out) that some prunable group can remove, each "
        "element counted once. The check is `geta.testing.coverage.check_model`.",
        "",
        "## Totals",
        "",
        *_totals(groups),
        "",
        "## Failures by cause",
        "",
        *_failures(data["models"]),
        "",
        LIMITS,
    ]
    for source, records in groups.items():
        out += [
            f"## {_SOURCE_TITLES[source]}",
            "",
            "| model | result | params | prunable / groups | prunable share | prepare+convert s | "
            "blocking frozen reasons (groups) or failure |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
            *(_row(r) for r in records),
            "",
            "Frozen groups by reason:",
            "",
            *_frozen_reasons(records),
            "",
        ]
    return "\n".join(out)
