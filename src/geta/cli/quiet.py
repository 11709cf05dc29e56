"""Keep torch's internal chatter off the console while the CLI calls into it.

- `quiet_exporters`: torch.onnx's informational logging and warnings during an export;
- `quiet_capture`: torch.export's warning about tensor attributes assigned during tracing,
  which modules such as ``nn.LSTM`` (``_flat_weights``) trigger on every capture; it is
  about torch's tracing, not about the user's model, so nothing the user could act on.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_capture", "quiet_exporters"]

_ASSIGNED_DURING_EXPORT = r"The tensor attributes .* were assigned during export"


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence torch.onnx's informational logging and warnings while exporting."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_capture() -> Iterator[None]:
    """Drop torch.export's "tensor attributes assigned during export" warning; keep all others."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ASSIGNED_DURING_EXPORT, category=UserWarning)
        yield
