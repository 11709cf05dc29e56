"""``geta inspect``: the prune groups and quantizers of a model, the ops that block pruning.

A thin wrapper over `geta.prepare` and `Plan.summary`; ``--graph FILE`` also writes a picture
of the graph with prunable groups coloured (`geta.cli.diagram`: .svg, .html, .png or .dot).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geta.cli.errors import CliError
from geta.cli.quiet import quiet_capture
from geta.recipes import DATA_SETS, RECIPES

__all__ = ["add_parser", "run", "group_params"]

_GRAPH_SUFFIXES = (".svg", ".html", ".htm", ".png", ".dot", ".gv")


def add_parser(subparsers: Any) -> None:
    """Register ``geta inspect``."""
    p = subparsers.add_parser(
        "inspect",
        help="list prune groups, quantizers and unsupported ops of a model",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument(
        "--model", default="resnet", help=f"recipe ({', '.join(RECIPES)}), hf:DIR or module:factory [resnet]"
    )
    p.add_argument(
        "--data",
        default=None,
        help=f"data set giving the input shape: {', '.join(DATA_SETS)} [digits; text for llama and hf:DIR]",
    )
    p.add_argument(
        "--input-shape", metavar="SHAPE", help="example input shape instead of --data, e.g. 1,3,32,32"
    )
    p.add_argument(
        "--input-dtype", default="float32", metavar="DTYPE", help="dtype of --input-shape [float32]"
    )
    p.add_argument("--weight-bits", metavar="LO,HI", help="weight bit range [as geta compress]")
    p.add_argument("--act-bits", metavar="LO,HI", help="activation bit range or none [as geta compress]")
    p.add_argument(
        "--graph",
        metavar="FILE",
        help="write a picture: FILE.svg, FILE.html, FILE.png (needs Graphviz) or FILE.dot",
    )
    p.set_defaults(func=run)


def group_params(plan: Any) -> list[tuple[int, int, int]]:
    """(group id, parameters on the group, parameters per unit) for every group."""
    out = []
    for g in plan.groups:
        total = sum(s.rows().numel() for s in g.slices if s.is_param)
        out.append((g.id, total, total // max(g.size, 1)))
    return out


def _bits_note(config: Any) -> str:
    """What the quantizer bits of the summary are: the initial ones, not what training ends at."""
    w_lo, w_hi = config.weight_bits
    acts = "stay float" if config.act_bits is None else "end in {}-{} bits".format(*config.act_bits)
    return (
        f"note: the quantizer bits above are the initial bits ({config.init_bits}); after QASSO "
        f"training (geta compress) weights end in {w_lo}-{w_hi} bits and layer inputs {acts}"
    )


def _example(args: argparse.Namespace, data: Any) -> tuple[Any, ...]:
    if args.input_shape is None:
        return tuple(data.example(2))
    from geta.cli.artifacts import RunFiles, load_inputs

    return load_inputs(RunFiles(Path("-"), None, None), args.input_shape, args.input_dtype)


def run(args: argparse.Namespace) -> int:
    """Print the plan summary and parameters per group; write the graph picture if asked."""
    import geta
    from geta.cli.options import CompressOptions
    from geta.recipes import build_model, load_run_data

    if args.graph and Path(args.graph).suffix.lower() not in _GRAPH_SUFFIXES:
        raise CliError(f"--graph {args.graph}: the file must end in {', '.join(_GRAPH_SUFFIXES)}")
    text_model = args.model == "llama" or args.model.startswith("hf:")
    data_spec = args.data or ("text" if text_model else "digits")
    given = dict(model=args.model, data=data_spec, weight_bits=args.weight_bits, act_bits=args.act_bits)
    opts = CompressOptions.from_mapping(
        {k: v for k, v in given.items() if v is not None}, where=lambda k: f"--{k.replace('_', '-')}"
    )
    data = load_run_data(opts.model, opts.data, seed=0)
    model = build_model(opts.model, data).eval()
    config = geta.Config(target_sparsity=opts.sparsity, weight_bits=opts.weight_bits, act_bits=opts.act_bits)
    with quiet_capture():
        plan = geta.prepare(model, _example(args, data), config)
    print(plan.summary())
    print(_bits_note(config))
    print("parameters per group (total / per unit):")
    for gid, total, per_unit in group_params(plan):
        print(f"  g{gid:<4} {total:>10,} / {per_unit:,}")
    unknown = plan.analysis.unknown_ops if plan.analysis is not None else {}
    print("ops without a handler: " + (", ".join(sorted(unknown)) if unknown else "none"))
    if args.graph:
        from geta.cli.diagram import write_graph

        path = Path(args.graph).expanduser()
        if path.is_dir() or not path.parent.is_dir():
            raise CliError(f"--graph {path}: pass a file in an existing directory")
        write_graph(plan, path)
        print(f"wrote {path}")
    return 0
