"""The argument checks every part of the package shares (a leaf module: no imports)."""

from __future__ import annotations

__all__ = ["is_int", "is_number"]


def is_int(v: object, lo: int | None = None, hi: int | None = None) -> bool:
    """``v`` is an ``int`` (a ``bool`` is not), at least ``lo`` and at most ``hi`` when given.

    Callers raise their own ``ValueError`` naming the field and the fix; this only decides.
    """
    if isinstance(v, bool) or not isinstance(v, int):
        return False
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def is_number(v: object) -> bool:
    """``v`` is an ``int`` or a ``float`` (a ``bool`` is not); NaN and infinities included."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)
