"""The ``geta`` command line: ``compress``, ``inspect``, ``report``, ``export``, ``env``.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``, and is a thin wrapper over public functions of geta. Only this package
prints.
"""

from __future__ import annotations

__all__: list[str] = []
