"""Row layouts shared by the row-wise ops (norm, rope, softmax): a tensor whose last dim is
contiguous seen as a grid of rows with at most two levels of row strides."""

from __future__ import annotations

from collections.abc import Sequence

from inference_pio.tensor import Tensor


def row_grid(name: str, t: Tensor, levels: int = 2) -> tuple[list[int], list[int]]:
    """Collapses the leading dims of ``t`` into at most ``levels`` (count, stride) pairs.

    Returns ``(counts, strides)`` padded in front with ``(1, 0)`` to ``levels`` entries. Raises
    ValueError when the last dim is not contiguous or the leading dims cannot be merged.
    """
    if t.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dim, got a 0-d tensor")
    if t.shape[-1] > 1 and t.strides[-1] != 1:
        raise ValueError(
            f"{name}: the last dim must be contiguous (stride 1), got strides {t.strides}"
        )
    dims = [(n, s) for n, s in zip(t.shape[:-1], t.strides[:-1], strict=True) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == s * n:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    if any(n == 0 for n in t.shape[:-1]):
        merged = [(0, 0)]
    if len(merged) > levels:
        raise ValueError(
            f"{name}: layout with shape {t.shape} and strides {t.strides} cannot be expressed as "
            f"{levels} row strides; call .contiguous()"
        )
    for _, s in merged:
        if s < 0:
            raise ValueError(f"{name}: negative strides are not supported")
    merged = [(1, 0)] * (levels - len(merged)) + merged
    return [n for n, _ in merged], [s for _, s in merged]


def row_layout(name: str, t: Tensor, *, output: bool = False) -> tuple[Tensor, int, int]:
    """``t`` as ``rows`` rows of its last dim ``ld`` elements apart: ``(t, rows, ld)``.

    Rows that overlap (a row stride below the row length, e.g. a stride-0 broadcast) are copied
    for an input (the result is the same as torch's) and refused for an output.
    """
    width = t.shape[-1] if t.ndim else 1
    (rows,), (ld,) = row_grid(name, t, levels=1)
    if rows <= 1:
        return t, rows, width
    if ld < width:
        if output:
            raise ValueError(f"{name}: rows overlap (row stride {ld} < {width}); use a fresh out")
        t = t.contiguous()
        (rows,), (ld,) = row_grid(name, t, levels=1)
    return t, rows, ld


def require_disjoint_rows(
    name: str, counts: Sequence[int], strides: Sequence[int], width: int
) -> None:
    """ValueError unless the rows of an output (``width`` contiguous elements each, on a grid of
    ``counts`` rows at ``strides``) are disjoint in memory: written in place, rows that share
    memory (a stride-0 dim) would keep only the last row's values."""
    extent = width
    for stride, n in sorted((st, n) for st, n in zip(strides, counts, strict=True) if n > 1):
        if stride < extent:
            raise ValueError(f"{name}: its rows overlap in memory (strides {tuple(strides)})")
        extent += stride * (n - 1)
