"""The Qwen3-VL vision tower (models.md §6.3): patch embedding, learned positions resampled to
the image's grid, 2-D rotary, pre-norm ViT blocks with bidirectional attention inside each
image, and the mergers that turn every 2x2 block of patches into one text-width vector (the
final merger, and the deepstack mergers tapped after some blocks).

Everything runs through ``inference_pio.ops`` on the model's device; only the indexes and
weights of the position grid's taps and the patches' (row, col) are made on the host.
"""

from __future__ import annotations

import ctypes
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference_pio import ops
from inference_pio.device import Device
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor
from inference_pio_qwen3_vl_2b.config import GELU_KINDS, VisionConfig
from inference_pio_qwen3_vl_2b.preprocess import PreparedImage

WeightPlan = dict[str, tuple[tuple[int, ...], str]]
LAYER_NORM_EPS = 1e-6
#: grids whose position embeddings a tower keeps
POSITION_CACHE = 8


def vision_plan(cfg: VisionConfig, prefix: str = "model.visual.") -> WeightPlan:
    """Every tensor of the vision tower with its shape and init kind (the on-disk names)."""
    d, inner, merged = cfg.hidden_size, cfg.intermediate_size, cfg.merged_size
    p = prefix
    plan: WeightPlan = {
        p + "patch_embed.proj.weight": (
            (d, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size),
            "normal",
        ),
        p + "patch_embed.proj.bias": ((d,), "normal"),
        p + "pos_embed.weight": ((cfg.num_position_embeddings, d), "normal"),
    }

    def linear(name: str, out: int, inp: int) -> None:
        plan[name + ".weight"] = ((out, inp), "normal")
        plan[name + ".bias"] = ((out,), "normal")

    def norm(name: str, dim: int) -> None:
        plan[name + ".weight"] = ((dim,), "norm")
        plan[name + ".bias"] = ((dim,), "normal")

    for i in range(cfg.depth):
        b = f"{p}blocks.{i}."
        norm(b + "norm1", d)
        norm(b + "norm2", d)
        linear(b + "attn.qkv", 3 * d, d)
        linear(b + "attn.proj", d, d)
        linear(b + "mlp.linear_fc1", inner, d)
        linear(b + "mlp.linear_fc2", d, inner)
    norm(p + "merger.norm", d)
    linear(p + "merger.linear_fc1", merged, merged)
    linear(p + "merger.linear_fc2", cfg.out_hidden_size, merged)
    for j in range(len(cfg.deepstack_visual_indexes)):
        m = f"{p}deepstack_merger_list.{j}."
        norm(m + "norm", merged)
        linear(m + "linear_fc1", merged, merged)
        linear(m + "linear_fc2", cfg.out_hidden_size, merged)
    return plan


@dataclass(frozen=True)
class _Linear:
    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _Norm:
    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.weight, self.bias, LAYER_NORM_EPS)


@dataclass(frozen=True)
class _Block:
    norm1: _Norm
    q: _Linear
    k: _Linear
    v: _Linear
    proj: _Linear
    norm2: _Norm
    fc1: _Linear
    fc2: _Linear


@dataclass(frozen=True)
class _Merger:
    """LayerNorm (per patch, or over the merged block: ``post_shuffle``), fc1, exact GELU, fc2."""

    norm: _Norm
    fc1: _Linear
    fc2: _Linear
    post_shuffle: bool

    def __call__(self, x: Tensor, merged: int) -> Tensor:
        n = x.shape[0] * x.shape[1] // merged
        h = self.norm(x.reshape(n, merged)) if self.post_shuffle else self.norm(x)
        f = self.fc1(h.reshape(n, merged))
        ops.gelu(f, "none", out=f)
        return self.fc2(f)


@dataclass(frozen=True)
class VisionOutput:
    """The tower's result for a list of images, rows in image order."""

    embeds: Tensor  #: ``[image tokens, text hidden]``, replaces the image pads' embeddings
    deepstack: list[Tensor]  #: one ``[image tokens, text hidden]`` per deepstack tap


class VisionTower:
    """Runs prepared images through the vision encoder on ``device`` in ``dtype``."""

    def __init__(
        self,
        cfg: VisionConfig,
        w: Callable[[str], Tensor],
        device: Device,
        dtype: DType,
        prefix: str = "model.visual.",
    ) -> None:
        """``w`` gives a checkpoint tensor on ``device``."""
        self.cfg, self.device, self.dtype = cfg, device, dtype
        p = prefix

        def linear(name: str) -> _Linear:
            return _Linear(w(name + ".weight"), w(name + ".bias"))

        def norm(name: str) -> _Norm:
            return _Norm(w(name + ".weight"), w(name + ".bias"))

        proj = w(p + "patch_embed.proj.weight")
        self.patch_embed = _Linear(
            proj.reshape(cfg.hidden_size, cfg.patch_values), w(p + "patch_embed.proj.bias")
        )
        self.pos_table = w(p + "pos_embed.weight")
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        d = cfg.hidden_size
        self.blocks: list[_Block] = []
        for i in range(cfg.depth):
            b = f"{p}blocks.{i}."
            qkv_w, qkv_b = w(b + "attn.qkv.weight"), w(b + "attn.qkv.bias")
            q, k, v = (
                _Linear(qkv_w.narrow(0, j * d, d), qkv_b.narrow(0, j * d, d)) for j in range(3)
            )
            self.blocks.append(
                _Block(
                    norm(b + "norm1"),
                    q,
                    k,
                    v,
                    linear(b + "attn.proj"),
                    norm(b + "norm2"),
                    linear(b + "mlp.linear_fc1"),
                    linear(b + "mlp.linear_fc2"),
                )
            )
        self.act = GELU_KINDS[cfg.hidden_act]
        self.merger = _Merger(
            norm(p + "merger.norm"),
            linear(p + "merger.linear_fc1"),
            linear(p + "merger.linear_fc2"),
            post_shuffle=False,
        )
        # a block listed twice taps once, through the merger of its first listing
        # (transformers: ``deepstack_visual_indexes.index(block)``)
        self.deepstack: dict[int, _Merger] = {}
        for j, block in enumerate(cfg.deepstack_visual_indexes):
            if block not in self.deepstack:
                self.deepstack[block] = _Merger(
                    norm(f"{p}deepstack_merger_list.{j}.norm"),
                    linear(f"{p}deepstack_merger_list.{j}.linear_fc1"),
                    linear(f"{p}deepstack_merger_list.{j}.linear_fc2"),
                    post_shuffle=True,
                )

    def __call__(self, images: Sequence[PreparedImage]) -> VisionOutput:
        """Encodes ``images``; the rows of each image follow the merge-block patch order."""
        cfg = self.cfg
        if not images:
            raise ValueError("the vision tower needs at least one image")
        for im in images:
            if im.merge != cfg.spatial_merge_size or im.patches.shape[1] != cfg.patch_values:
                raise ValueError(
                    f"image prepared for merge {im.merge} and {im.patches.shape[1]} values a "
                    f"patch; the tower takes merge {cfg.spatial_merge_size} and {cfg.patch_values}"
                )
        grids = [(im.grid_h, im.grid_w) for im in images]
        patches = _concat_rows([im.patches for im in images]).to(self.dtype).to(self.device)
        x = self.patch_embed(patches)
        cu = [0]
        for grid in grids:
            rows = x.narrow(0, cu[-1], grid[0] * grid[1])
            ops.add(rows, self.position_embeddings(grid), out=rows)
            cu.append(cu[-1] + grid[0] * grid[1])
        cos, sin = self.rotary_tables(grids)
        n, d, heads = x.shape[0], cfg.hidden_size, cfg.num_heads
        hd = cfg.head_dim
        taps: list[Tensor] = []
        for i, blk in enumerate(self.blocks):
            h = blk.norm1(x)
            q = blk.q(h).reshape(n, heads, hd)
            k = blk.k(h).reshape(n, heads, hd)
            v = blk.v(h).reshape(n, heads, hd)
            ops.rope_apply(q, cos, sin)
            ops.rope_apply(k, cos, sin)
            o = ops.attention(q, k, v, causal=False, kv_layout="tokens", cu_seqlens=cu)
            ops.add(x, blk.proj(o.reshape(n, d)), out=x)
            f = blk.fc1(blk.norm2(x))
            ops.gelu(f, self.act, out=f)  # type: ignore[arg-type]
            ops.add(x, blk.fc2(f), out=x)
            merger = self.deepstack.get(i)
            if merger is not None:
                taps.append(merger(x, cfg.merged_size))
        return VisionOutput(self.merger(x, cfg.merged_size), taps)

    def position_embeddings(self, grid: tuple[int, int]) -> Tensor:
        """``[patches, hidden]`` in the compute dtype on the model's device: the learned square
        grid resampled to a ``grid`` of patches (bilinear, align_corners, the four taps summed
        in fp32 and rounded once, as transformers does), in the merge-block patch order. Kept
        for the last few grids (images of one size repeat)."""
        cached = self._pos_cache.get(grid)
        if cached is not None:
            return cached
        gh, gw = grid
        side = self.cfg.grid_side
        rows = [_axis_taps(r, gh, side) for r in range(gh)]
        cols = [_axis_taps(c, gw, side) for c in range(gw)]
        order = _block_order(gh, gw, self.cfg.spatial_merge_size)
        ids = array("i")
        weights = array("f")  # float32: each product of two fp32 weights rounded once
        for ri, ci in ((0, 0), (0, 1), (1, 0), (1, 1)):
            ids.extend(rows[r][0][ri] * side + cols[c][0][ci] for r, c in order)
            weights.extend(rows[r][1][ri] * cols[c][1][ci] for r, c in order)
        n = len(order)
        idx = Tensor.frombuffer(bytearray(ids.tobytes()), DType.int32, (4, n)).to(self.device)
        wt = Tensor.frombuffer(bytearray(weights.tobytes()), DType.float32, (4, n))
        wt = wt.to(self.device)
        taps = ops.embedding(idx, self.pos_table, out_dtype=DType.float32)  # [4, n, hidden]
        ops.mul_rows(taps, wt, out=taps)
        total = ops.add(taps[0], taps[1])
        ops.add(total, taps[2], out=total)
        ops.add(total, taps[3], out=total)
        pos = total.to(self.dtype)
        if len(self._pos_cache) >= POSITION_CACHE:
            self._pos_cache.pop(next(iter(self._pos_cache)))
        self._pos_cache[grid] = pos
        return pos

    def rotary_tables(self, grids: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """fp32 cos/sin ``[patches, head_dim]`` of each patch's (row, col), merge-block order,
        on the model's device."""
        rows = array("i")
        cols = array("i")
        for gh, gw in grids:
            order = _block_order(gh, gw, self.cfg.spatial_merge_size)
            rows.extend(r for r, _ in order)
            cols.extend(c for _, c in order)
        positions = Tensor.frombuffer(
            bytearray(rows.tobytes() + cols.tobytes()), DType.int32, (2, len(rows))
        )
        return ops.rope_cache_2d(
            positions.to(self.device), self.cfg.head_dim, self.cfg.rope_theta, dtype=DType.float32
        )


def _block_order(gh: int, gw: int, merge: int) -> list[tuple[int, int]]:
    """(row, col) of every patch of a gh x gw grid in merge-block order (block rows, block
    columns, then the rows and columns inside a block)."""
    return [
        (bh * merge + mh, bw * merge + mw)
        for bh in range(gh // merge)
        for bw in range(gw // merge)
        for mh in range(merge)
        for mw in range(merge)
    ]


def _f32(v: float) -> float:
    """``v`` rounded to the nearest float32 (IEEE single results of +, -, *, / on floats
    given in double precision)."""
    return float(struct.unpack("f", struct.pack("f", v))[0])


def _axis_taps(index: int, size: int, side: int) -> tuple[tuple[int, int], tuple[float, float]]:
    """The two source rows (clamped) and their bilinear weights for ``index`` of ``size`` on a
    ``side``-long grid with aligned corners, in fp32 as transformers computes them."""
    src = _f32(_f32(float(index) * (side - 1)) / max(size - 1, 1))
    lo = int(src // 1)
    w0 = max(0.0, _f32(1.0 - abs(_f32(src - lo))))
    w1 = max(0.0, _f32(1.0 - abs(_f32(_f32(src - lo) - 1.0))))
    return (min(lo, side - 1), min(lo + 1, side - 1)), (w0, w1)


def _concat_rows(parts: Sequence[Tensor]) -> Tensor:
    """Host tensors ``[n_i, d]`` of one dtype stacked into ``[sum n_i, d]``."""
    if len(parts) == 1:
        return parts[0]
    d, dt = parts[0].shape[1], parts[0].dtype
    out = Tensor.empty((sum(p.shape[0] for p in parts), d), dt)
    at = out.data_ptr
    for p in parts:
        src = p.contiguous()
        ctypes.memmove(at, src.data_ptr, src.nbytes)
        at += src.nbytes
    return out
