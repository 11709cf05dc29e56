"""From an `Analysis` to `PruneGroup`s: one group per channel space with parameter slices."""

from __future__ import annotations

import fnmatch

import torch

from geta.graph.context import Analysis
from geta.graph.prune_group import ParamSlice, PruneGroup
from geta.graph.space import Space

__all__ = ["build_groups", "group_positions"]


def group_positions(analysis: Analysis) -> dict[Space, list[tuple[int, torch.Tensor]]]:
    """For each leaf space: (binding index, positions (size, m)) of every binding on it."""
    out: dict[Space, list[tuple[int, torch.Tensor]]] = {}
    for i, b in enumerate(analysis.bindings):
        for space, pos in analysis.algebra.positions(b.expr).items():
            out.setdefault(space, []).append((i, pos))
    return out


def build_groups(
    analysis: Analysis, exclude: tuple[str, ...] = ()
) -> tuple[list[PruneGroup], dict[int, Space]]:
    """Prune groups in a deterministic order, and the space behind each group id."""
    per_space = group_positions(analysis)
    groups: list[PruneGroup] = []
    spaces: dict[int, Space] = {}
    for space in analysis.activation_spaces:
        entries = per_space.get(space, [])
        slices = _slices(analysis, entries)
        if not any(s.is_param for s in slices):
            continue
        prunable, reason = not space.frozen, space.reason
        if prunable and space.size < 2:
            prunable, reason = False, "a single channel (a layer must keep at least one)"
        hit = _excluded(slices, exclude)
        if prunable and hit:
            prunable, reason = False, f"excluded by the user ({hit})"
        gid = len(groups)
        groups.append(PruneGroup(gid, space.size, tuple(slices), prunable, None if prunable else reason))
        spaces[gid] = space
    return groups, spaces


def _slices(analysis: Analysis, entries: list[tuple[int, torch.Tensor]]) -> list[ParamSlice]:
    merged: dict[tuple[int, int], list[torch.Tensor]] = {}
    refs = {}
    for i, pos in entries:
        b = analysis.bindings[i]
        key = (id(b.ref.tensor), b.dim)
        merged.setdefault(key, []).append(pos)
        refs[key] = b
    out = []
    for key, parts in merged.items():
        b = refs[key]
        index = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        out.append(ParamSlice(b.ref.tensor, b.ref.name, b.dim, index.contiguous(), b.ref.is_param))
    return out


def _excluded(slices: list[ParamSlice], patterns: tuple[str, ...]) -> str | None:
    for s in slices:
        module_name = s.name.rsplit(".", 1)[0]
        for p in patterns:
            if fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(s.name, p):
                return f"{p!r} matches {s.name}"
    return None
