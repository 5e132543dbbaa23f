"""Prompt placement of images and the 3-D MRoPE positions (models.md §6.4, §6.5)."""

from __future__ import annotations

from collections.abc import Sequence


def expand_image_pads(ids: Sequence[int], image_token: int, counts: Sequence[int]) -> list[int]:
    """Each image pad of the prompt repeated as many times as its image has tokens (what the
    processor does to ``<|image_pad|>``); the number of pads must equal the number of images."""
    pads = sum(1 for i in ids if i == image_token)
    if pads != len(counts):
        raise ValueError(
            f"the prompt has {pads} image placeholder(s) (token {image_token}) for "
            f"{len(counts)} image(s)"
        )
    out: list[int] = []
    it = iter(counts)
    for tok in ids:
        if tok == image_token:
            out.extend([image_token] * next(it))
        else:
            out.append(tok)
    return out


def mrope_positions(
    ids: Sequence[int], image_token: int, grids: Sequence[tuple[int, int]]
) -> tuple[list[list[int]], int]:
    """(t, h, w) positions of every token of an expanded prompt and the rope delta.

    ``grids`` are the images' merged grids (rows, columns of text tokens) in prompt order. Text
    tokens take the next position on all three axes; an image's tokens (raster order) take
    ``t = start``, ``h = start + row``, ``w = start + col``, after which the position advances
    by ``max(rows, cols)``. The delta (``max position + 1 - len(ids)``) is what decoding adds
    to the cache length."""
    t_pos: list[int] = []
    h_pos: list[int] = []
    w_pos: list[int] = []
    cur = 0
    i, n = 0, len(ids)
    images = iter(grids)
    while i < n:
        if ids[i] != image_token:
            t_pos.append(cur)
            h_pos.append(cur)
            w_pos.append(cur)
            cur += 1
            i += 1
            continue
        try:
            rows, cols = next(images)
        except StopIteration:
            raise ValueError("more image tokens in the prompt than the images provide") from None
        count = rows * cols
        if list(ids[i : i + count]) != [image_token] * count:
            raise ValueError(f"an image of {count} tokens has fewer pads in the prompt")
        for r in range(rows):
            for c in range(cols):
                t_pos.append(cur)
                h_pos.append(cur + r)
                w_pos.append(cur + c)
        cur += max(rows, cols)
        i += count
    if next(images, None) is not None:
        raise ValueError("fewer image tokens in the prompt than the images provide")
    top = max(max(t_pos), max(h_pos), max(w_pos)) if n else -1
    return [t_pos, h_pos, w_pos], top + 1 - n
