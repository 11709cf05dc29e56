"""`RecipeError`: a built-in recipe, data set or user factory cannot be used as asked."""

from __future__ import annotations

from geta.errors import GetaError

__all__ = ["RecipeError"]


class RecipeError(GetaError, ValueError):
    """Bad model or data specification; the message names the problem and the fix."""
