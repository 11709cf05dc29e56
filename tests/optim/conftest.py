"""Make the QASSO test helpers (``optim_models``) importable under ``--import-mode=importlib``.

The helper modules carry unique names, so putting this folder on ``sys.path`` cannot shadow
anything; spawned DDP workers inherit the path from the parent process.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
