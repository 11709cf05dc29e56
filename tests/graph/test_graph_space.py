"""The label algebra against slow, obvious references."""

from __future__ import annotations

import itertools

import torch

from geta.graph.space import Anon, SpaceAlgebra, concat, prod


def test_prod_positions_match_mixed_radix_enumeration() -> None:
    alg = SpaceAlgebra()
    heads, dim = alg.new(3), alg.new(4)
    pos = alg.positions(prod(heads, Anon(2), dim))  # index = (h * 2 + a) * 4 + d
    for h in range(3):
        expected = sorted((h * 2 + a) * 4 + d for a, d in itertools.product(range(2), range(4)))
        assert sorted(pos[heads][h].tolist()) == expected
    for d in range(4):
        expected = sorted((h * 2 + a) * 4 + d for h, a in itertools.product(range(3), range(2)))
        assert sorted(pos[dim][d].tolist()) == expected


def test_sum_positions_are_offsets() -> None:
    alg = SpaceAlgebra()
    a, b = alg.new(2), alg.new(3)
    pos = alg.positions(concat(a, Anon(4), b))
    assert pos[a].flatten().tolist() == [0, 1] and pos[b].flatten().tolist() == [6, 7, 8]


def test_unify_refines_a_space_like_its_partner() -> None:
    alg = SpaceAlgebra()
    fused, q, k = alg.new(6), alg.new(3), alg.new(3)
    alg.unify(fused, concat(q, k), "split")
    assert set(alg.leaves(fused)) == {q.find(), k.find()}
    heads, hd = alg.new(3), alg.new(1)
    alg.unify(q, prod(heads, hd), "view")
    assert alg.positions(fused)[heads.find()].flatten().tolist() == [0, 1, 2]


def test_unify_with_anon_freezes_and_mismatch_freezes_both() -> None:
    alg = SpaceAlgebra()
    s = alg.new(4)
    alg.unify(s, Anon(4), "add input")
    assert s.find().frozen and "unsliceable" in (s.find().reason or "")
    a, b = alg.new(6), alg.new(6)
    alg.unify(prod(alg.new(2), alg.new(3)), a, "x")
    alg.unify(prod(alg.new(3), alg.new(2)), b, "y")
    alg.unify(a, b, "z")  # 2x3 against 3x2 cannot be reconciled
    assert all(leaf.frozen for leaf in alg.leaves(a) + alg.leaves(b))


def test_split_to_cuts_factors_at_reshape_boundaries() -> None:
    alg = SpaceAlgebra()
    s = alg.new(12)
    out = alg.split_to(prod(Anon(2), s), [2, 3, 4])  # view (2, 12) -> (2, 3, 4)
    assert [e.size for e in out] == [2, 3, 4]
    assert len(alg.leaves(s)) == 2  # s refined into Prod(3, 4)


def test_kept_counts_surviving_positions() -> None:
    alg = SpaceAlgebra()
    h, d = alg.new(4), alg.new(8)
    e = prod(h, d)
    removed = {h: torch.tensor([0, 2])}
    assert alg.kept(e, removed) == 16
