"""The worked examples of docs/contributing.md run as written, each in a fresh interpreter.

Each example registers something (an op, a module spec, a rule, an exporter) in geta's
registries; a fresh process keeps those registrations out of the rest of the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("contributing*.md"))


def _examples() -> list[tuple[str, str]]:
    """(section heading, code) of every ```python block, by the ``## `` heading above it."""
    found = []
    for page in PAGES:
        heading = page.name
        for part in re.split(r"^(## .*)$", page.read_text(encoding="utf-8"), flags=re.M):
            if part.startswith("## "):
                heading = part[3:].strip()
                continue
            for code in re.findall(r"```python\n(.*?)```", part, flags=re.S):
                found.append((heading, code))
    return found


EXAMPLES = _examples()


def test_every_extension_has_an_example() -> None:
    headings = {h for h, _ in EXAMPLES}
    assert {"Add an op", "Add a module type", "Add a forget rule", "Add an exporter"} <= headings


@pytest.mark.parametrize("heading,code", EXAMPLES, ids=[h for h, _ in EXAMPLES])
def test_example_runs(heading: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"docs example '{heading}' failed:\n{done.stderr[-3000:]}"
