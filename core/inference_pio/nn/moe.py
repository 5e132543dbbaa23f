"""Sparse mixture-of-experts MLPs: SwiGLU experts behind a softmax top-k router (Qwen3-MoE;
models.md §1.5) or a sigmoid "noaux_tc" router with a shared expert (GLM-4.7-Flash; §1.6).

``out = Σ_j w_j · expert_{idx_j}(x)`` over each token's k chosen experts. Rounding follows
transformers' eager experts: each expert's output times its weight rounded to the activation
dtype and added into a zeroed output, expert by expert in ascending order (a bf16 output rounds
after every add, as ``index_add_`` does). The softmax router computes its logits in the
activation dtype, softmax and top-k in fp32 and rounds the weights to the activation dtype; the
sigmoid router computes in fp32 throughout and keeps fp32 weights.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

from inference_pio.backend import Backend
from inference_pio.dtypes import DType
from inference_pio.nn.layers import Linear
from inference_pio.nn.mlp import SwiGLU
from inference_pio.tensor import Tensor

#: Experts per token of the device's ordered combine (toc_moe_combine).
COMBINE_MAX_K = 64
COMBINE_MAX_T = 65535
#: Rows of one tile of the device's grouped expert GEMM (toc_moe_grouped_linear).
GROUPED_TILE_ROWS = 64
MAX_LAUNCH_TILES = 65535


def moe_step_enabled() -> bool:
    """Whether one token's mixture-of-experts MLP runs as one cooperative launch on CUDA
    (toc_moe_step / toc_moe_step_sigmoid) where the shapes allow it;
    ``INFERENCE_PIO_CUDA_MOE_STEP=0`` keeps the separate kernels it replaces."""
    return os.environ.get("INFERENCE_PIO_CUDA_MOE_STEP", "1") != "0"


class RoutedExperts:
    """E SwiGLU experts of one width; each token runs the ``k`` its router picks. Subclasses
    route (``__call__``) and hand the choice to :meth:`run_experts`.

    Callable as ``(backend, x [T, hidden], out [T, hidden]) -> out`` (the MLP slot of
    :class:`~inference_pio.nn.DecoderLayer`). The experts a token runs depend on its values, so
    the block is not replayable by CPU decode plans.
    """

    #: Decode plans must not replay this block: which experts run depends on the data.
    replayable = False

    def cuda_capturable(self, be: Backend, act: DType) -> bool:
        """Whether a CUDA decode step may be captured with this block (nn.cuda_capture): one
        token takes the device path, which reads nothing back to the host."""
        return self.device_path_ok(be, act, 1) and all(
            getattr(sh, "cuda_capturable", False) is True
            for sh in (getattr(self, "shared", None),)
            if sh is not None
        )

    def __init__(self, experts: Sequence[SwiGLU], k: int, hidden: int) -> None:
        if not experts:
            raise ValueError(f"{type(self).__name__} needs at least one expert")
        for i, ex in enumerate(experts):
            if ex.gate.in_features != hidden or ex.down.out_features != hidden:
                raise ValueError(f"expert {i} does not map hidden size {hidden} to itself")
        if not 1 <= k <= min(len(experts), 1024):
            raise ValueError(f"k={k} must lie in 1..{min(len(experts), 1024)}")
        self.experts, self.k = list(experts), k
        first = self.experts[0]
        #: Whether the CPU may run all experts in batched calls (one width, one weight dtype,
        #: no biases, not FP8; see _batched_experts).
        self._batchable = all(
            lin.bias is None
            and not lin.quantized  # FP8 experts run one by one (linear_fp8)
            and lin.weight.dtype == first.gate.weight.dtype
            and lin.weight.shape == ref.weight.shape
            for ex in self.experts
            for lin, ref in ((ex.gate, first.gate), (ex.up, first.up), (ex.down, first.down))
        )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def expert_bytes(self) -> int:
        """Weight bytes of the k experts one token runs, on average."""
        experts = sum(lin.weight.nbytes for ex in self.experts for lin in (ex.gate, ex.up, ex.down))
        return experts * self.k // self.num_experts

    def run_experts(
        self, be: Backend, x: Tensor, idx: Tensor, weights: Tensor, out: Tensor
    ) -> Tensor:
        """``out = Σ_j weights[:, j] · expert_{idx[:, j]}(x)`` (idx, weights [T, k])."""
        t, hidden = x.shape
        e, k = self.num_experts, self.k
        on_device = be.device.type != "cpu"
        if on_device and self.device_path_ok(be, x.dtype, t):
            return self._device_experts(be, x, idx, weights, out)
        counts = be.scratch("moe.counts", (e,), DType.int32)
        offsets = be.scratch("moe.offsets", (e + 1,), DType.int32)
        order = be.scratch("moe.order", (t * k,), DType.int32)
        be.call(
            "moe_group_by_expert",
            idx.data_ptr,
            t * k,
            e,
            counts.data_ptr,
            offsets.data_ptr,
            order.data_ptr,
        )
        # routing entries (flat positions token * k + slot) sorted by expert, then by position
        offs: list[int] = offsets.tolist()
        positions: list[int] = order.tolist()
        tokens = Tensor.from_list([p // k for p in positions], DType.int32)
        if on_device:
            tokens = tokens.to(be.device)
        n = t * k
        xs = be.scratch("moe.x", (n, hidden), x.dtype)
        be.call("moe_gather_rows", x.data_ptr, tokens.data_ptr, xs.data_ptr, t, n, hidden, x.dtype)
        ys = be.scratch("moe.y", (n, hidden), x.dtype)
        if not on_device and self._batchable and be.has("linear_batched"):
            self._batched_experts(be, xs, ys, offs)
        else:
            for ex in range(e):
                lo, hi = offs[ex], offs[ex + 1]
                if hi > lo:
                    self.experts[ex](be, xs.narrow(0, lo, hi - lo), ys.narrow(0, lo, hi - lo))
        if on_device and k <= COMBINE_MAX_K and t <= COMBINE_MAX_T:
            # the outputs back in (token, slot) order, then one thread per (token, column) adds
            # its token's k products in expert order (the scatter-add below walks every entry
            # in turn, one column per thread)
            inverse = [0] * n
            for i, p in enumerate(positions):
                inverse[p] = i
            inv = Tensor.from_list(inverse, DType.int32).to(be.device)
            return self._combine(be, ys, inv, idx, weights, out)
        ws = be.scratch("moe.w", (n, 1), weights.dtype)
        be.call("moe_gather_rows", weights.data_ptr, order.data_ptr, ws.data_ptr, n, n, 1, ws.dtype)
        out.zero_()
        be.call(
            "moe_scatter_add",
            ys.data_ptr,
            tokens.data_ptr,
            ws.data_ptr,
            out.data_ptr,
            n,
            t,
            hidden,
            ys.dtype,
            ws.dtype,
            out.dtype,
            1,
        )
        return out

    def _batched_experts(self, be: Backend, xs: Tensor, ys: Tensor, offs: list[int]) -> None:
        """Every expert with rows over its rows of ``xs`` (sorted by expert, ``offs``) into
        ``ys``: gate and up of all of them in one native call, SwiGLU over all rows, down in one
        call (``linear_batched``: each expert gets the bits of its own calls)."""
        act, hidden = xs.dtype, xs.shape[1]
        inter = self.experts[0].inter
        es = act.itemsize
        runs = [(ex, offs[ex], offs[ex + 1]) for ex in range(self.num_experts)]
        runs = [r for r in runs if r[2] > r[1]]
        rows = xs.shape[0]
        g = be.scratch("moe.g", (rows, inter), act)
        u = be.scratch("moe.u", (rows, inter), act)
        wdt = self.experts[0].gate.weight.dtype

        def batched(
            srcs: list[int], ms: list[int], ldx: int, ws: list[int], dsts: list[int], ldy: int,
            n_out: int, k_in: int,
        ) -> None:  # fmt: skip
            c = len(srcs)
            be.call(
                "linear_batched",
                c,
                (ctypes.c_void_p * c)(*srcs),
                (ctypes.c_int64 * c)(*ms),
                (ctypes.c_int64 * c)(*([ldx] * c)),
                (ctypes.c_void_p * c)(*ws),
                (ctypes.c_void_p * c)(*dsts),
                (ctypes.c_int64 * c)(*([ldy] * c)),
                n_out,
                k_in,
                act,
                wdt,
                act,
            )

        src = [xs.data_ptr + lo * hidden * es for _, lo, _ in runs]
        ms = [hi - lo for _, lo, hi in runs]
        batched(
            src + src,
            ms + ms,
            hidden,
            [self.experts[ex].gate.weight.data_ptr for ex, _, _ in runs]
            + [self.experts[ex].up.weight.data_ptr for ex, _, _ in runs],
            [g.data_ptr + lo * inter * es for _, lo, _ in runs]
            + [u.data_ptr + lo * inter * es for _, lo, _ in runs],
            inter,
            inter,
            hidden,
        )
        be.call("swiglu", g.data_ptr, u.data_ptr, g.data_ptr, rows, inter, inter, inter, inter, act)
        batched(
            [g.data_ptr + lo * inter * es for _, lo, _ in runs],
            ms,
            inter,
            [self.experts[ex].down.weight.data_ptr for ex, _, _ in runs],
            [ys.data_ptr + lo * hidden * es for _, lo, _ in runs],
            hidden,
            hidden,
            inter,
        )

    def device_path_ok(self, be: Backend, act: DType, rows: int) -> bool:
        """Whether ``rows`` rows run on the device path (routing plan, grouped GEMMs, ordered
        combine), which reads nothing back to the host, so a CUDA graph can capture it."""
        return (
            be.device.type == "cuda"
            and 1 <= rows <= COMBINE_MAX_T
            and self.k <= COMBINE_MAX_K
            and self._grouped_ok(be, act)
        )

    def _grouped_ok(self, be: Backend, act: DType) -> bool:
        """Whether the device's grouped expert GEMM can run this block: bf16 activations and
        weights, one expert width, rows a multiple of 8 elements, no biases."""
        if act != DType.bfloat16 or not be.has("moe_grouped_linear"):
            return False
        known: bool | None = self.__dict__.get("_weights_grouped_ok")
        if known is None:
            inter = self.experts[0].inter
            known = all(
                ex.inter == inter
                and all(
                    lin.weight.dtype == DType.bfloat16
                    and lin.bias is None
                    and lin.in_features % 8 == 0
                    for lin in (ex.gate, ex.up, ex.down)
                )
                for ex in self.experts
            )
            self.__dict__["_weights_grouped_ok"] = known
        return known

    def pointer_tables(self, be: Backend) -> tuple[Tensor, Tensor, Tensor]:
        """Device tables of the experts' gate / up / down weight pointers (made once per
        device), which the device's expert kernels index by expert id."""
        key = str(be.device)
        cached: dict[str, tuple[Tensor, Tensor, Tensor]] = self.__dict__.setdefault("_tabs", {})
        if key not in cached:
            cached[key] = tuple(  # type: ignore[assignment]
                Tensor.from_list(
                    [getattr(ex, name).weight.data_ptr for ex in self.experts], DType.int64
                ).to(be.device)
                for name in ("gate", "up", "down")
            )
        return cached[key]

    def _device_experts(
        self, be: Backend, x: Tensor, idx: Tensor, weights: Tensor, out: Tensor
    ) -> Tensor:
        """The experts on a CUDA device without a host round trip: the routing plan
        (toc_moe_plan: entries sorted by expert, their tokens, the inverse order and tiles of
        at most GROUPED_TILE_ROWS rows of one expert), the rows gathered, every expert's SwiGLU in
        three grouped GEMM launches and one SwiGLU (each output rounded as the per-expert ops
        round), the outputs gathered back into (token, slot) order and summed in expert order."""
        t, hidden = x.shape
        e, k = self.num_experts, self.k
        inter = self.experts[0].inter
        if t == 1 and self._aligned():
            return self._device_gemv(be, x, idx, weights, out)
        n = t * k
        max_tiles = n // GROUPED_TILE_ROWS + e
        i32 = DType.int32
        counts = be.scratch("moe.counts", (e,), i32)
        offsets = be.scratch("moe.offsets", (e + 1,), i32)
        order = be.scratch("moe.order", (n,), i32)
        tokens = be.scratch("moe.tokens", (n,), i32)
        inverse = be.scratch("moe.inverse", (n,), i32)
        tiles = be.scratch("moe.tiles", (max_tiles, 3), i32)
        be.call(
            "moe_plan",
            idx.data_ptr,
            n,
            e,
            k,
            GROUPED_TILE_ROWS,
            counts.data_ptr,
            offsets.data_ptr,
            order.data_ptr,
            tokens.data_ptr,
            inverse.data_ptr,
            tiles.data_ptr,
            max_tiles,
        )
        xs = be.scratch("moe.x", (n, hidden), x.dtype)
        be.call("moe_gather_rows", x.data_ptr, tokens.data_ptr, xs.data_ptr, t, n, hidden, x.dtype)
        gate_t, up_t, down_t = self.pointer_tables(be)
        g = be.scratch("moe.g", (n, inter), x.dtype)
        u = be.scratch("moe.u", (n, inter), x.dtype)
        ys = be.scratch("moe.y", (n, hidden), x.dtype)

        def grouped(src: Tensor, tab: Tensor, dst: Tensor, n_out: int, k_in: int) -> None:
            for t0 in range(0, max_tiles, MAX_LAUNCH_TILES):  # a launch's grid.y limit
                be.call(
                    "moe_grouped_linear",
                    src.data_ptr,
                    tiles.data_ptr + 12 * t0,
                    min(MAX_LAUNCH_TILES, max_tiles - t0),
                    tab.data_ptr,
                    e,
                    n_out,
                    k_in,
                    dst.data_ptr,
                    src.dtype,
                )

        grouped(xs, gate_t, g, inter, hidden)
        grouped(xs, up_t, u, inter, hidden)
        be.call(
            "swiglu", g.data_ptr, u.data_ptr, g.data_ptr, n, inter, inter, inter, inter, x.dtype
        )
        grouped(g, down_t, ys, hidden, inter)
        return self._combine(be, ys, inverse, idx, weights, out)

    def step_ok(
        self,
        be: Backend,
        x: Tensor,
        op: str,
        lins: Sequence[Linear],
        supported: Callable[[Any], int],
    ) -> bool:
        """Whether one token's MLP runs as the one cooperative launch ``op`` (toc_moe_step or
        toc_moe_step_sigmoid) on this device: one bf16 row on CUDA, bf16 16-byte aligned weights
        (the experts' and ``lins``), shapes the library takes (``supported``, given the CUDA
        library, returns 0); ``INFERENCE_PIO_CUDA_MOE_STEP=0`` keeps the separate kernels."""
        if x.shape[0] != 1 or be.device.type != "cuda" or x.dtype != DType.bfloat16:
            return False
        if not moe_step_enabled() or not be.has(op):
            return False
        known: bool | None = self.__dict__.get("_step_known")
        if known is None:
            from inference_pio import cuda

            known = (
                self._grouped_ok(be, x.dtype)
                and self._aligned()
                and self.k <= COMBINE_MAX_K
                and all(
                    lin.weight.dtype == DType.bfloat16
                    and lin.bias is None
                    and lin.weight.data_ptr % 16 == 0
                    for lin in lins
                )
                and supported(cuda.lib()) == 0
            )
            self.__dict__["_step_known"] = known
        return known

    def _aligned(self) -> bool:
        """Whether every expert weight starts on 16 bytes (the decode GEMV's vector loads)."""
        known: bool | None = self.__dict__.get("_weights_aligned")
        if known is None:
            known = all(
                lin.weight.data_ptr % 16 == 0
                for ex in self.experts
                for lin in (ex.gate, ex.up, ex.down)
            )
            self.__dict__["_weights_aligned"] = known
        return known

    def _device_gemv(
        self, be: Backend, x: Tensor, idx: Tensor, weights: Tensor, out: Tensor
    ) -> Tensor:
        """One token (batch-1 decode): the k chosen experts' gate/up GEMVs with SwiGLU in one
        launch and their down GEMVs in another (toc_moe_gemv: a block row per routing slot,
        the weights found through the pointer tables), then the ordered combine, as the CUDA
        graph decoder runs them. A grouped GEMM's 64-row tiles would hold one row each here."""
        hidden = x.shape[1]
        e, k = self.num_experts, self.k
        inter = self.experts[0].inter
        gate_t, up_t, down_t = self.pointer_tables(be)
        h = be.scratch("moe.h1", (k, inter), x.dtype)
        ys = be.scratch("moe.y1", (k, hidden), x.dtype)
        be.call(
            "moe_gemv",
            x.data_ptr, 0, None, 0, 0.0, idx.data_ptr, k, e, gate_t.data_ptr, up_t.data_ptr,
            inter, hidden, h.data_ptr, inter, x.dtype,
        )  # fmt: skip
        be.call(
            "moe_gemv",
            h.data_ptr, inter, None, 0, 0.0, idx.data_ptr, k, e, down_t.data_ptr, None,
            hidden, inter, ys.data_ptr, hidden, x.dtype,
        )  # fmt: skip
        be.call(
            "moe_combine",
            ys.data_ptr, idx.data_ptr, weights.data_ptr, None, out.data_ptr, 1, k, e, hidden,
            ys.dtype, weights.dtype, out.dtype,
        )  # fmt: skip
        return out

    def _combine(
        self, be: Backend, ys: Tensor, inverse: Tensor, idx: Tensor, weights: Tensor, out: Tensor
    ) -> Tensor:
        """On the device: the expert outputs ``ys`` (sorted by expert) gathered back into
        (token, slot) order by ``inverse``, then each token's k weighted outputs added in expert
        order (toc_moe_combine: the roundings of the zeroed output plus moe_scatter_add)."""
        n, hidden = ys.shape
        t, k = idx.shape
        yt = be.scratch("moe.yt", (n, hidden), ys.dtype)
        be.call(
            "moe_gather_rows", ys.data_ptr, inverse.data_ptr, yt.data_ptr, n, n, hidden, ys.dtype
        )
        be.call(
            "moe_combine",
            yt.data_ptr,
            idx.data_ptr,
            weights.data_ptr,
            None,
            out.data_ptr,
            t,
            k,
            self.num_experts,
            hidden,
            yt.dtype,
            weights.dtype,
            out.dtype,
        )
        return out


class SoftmaxTopKMoE(RoutedExperts):
    """Qwen3-MoE: router ``[E, hidden]`` in the activation dtype, softmax and top-k in fp32,
    optionally renormalised, weights rounded to the activation dtype. Runs on the CPU and on CUDA
    devices (there, batch-1 decode steps run from a captured graph without reading the routing
    back: :class:`~inference_pio.nn.cuda_graph.CudaGraphDecoder`). Qwen3-Next adds a shared
    SwiGLU expert scaled per token by ``sigmoid(shared_gate(x))`` (``shared_gate`` [1, hidden]):
    ``routed + sigmoid(g) * shared``, each op rounded to the activation dtype."""

    def __init__(
        self,
        router: Linear,
        experts: Sequence[SwiGLU],
        k: int,
        *,
        renormalize: bool = True,
        shared: SwiGLU | None = None,
        shared_gate: Linear | None = None,
    ) -> None:
        if router.out_features != len(experts):
            raise ValueError(f"router has {router.out_features} outputs for {len(experts)} experts")
        super().__init__(experts, k, router.in_features)
        if (shared is None) != (shared_gate is None):
            raise ValueError("a shared expert and its gate come together")
        if shared_gate is not None and (
            shared_gate.out_features != 1 or shared_gate.in_features != router.in_features
        ):
            raise ValueError(f"the shared expert's gate must be [1, {router.in_features}]")
        self.router = router
        self.renormalize = renormalize
        self.shared, self.shared_gate = shared, shared_gate

    def decode_weight_bytes(self) -> int:
        """Weight bytes one token reads: the router, on average k of the E experts, and the
        shared expert with its gate."""
        extra = 0
        if self.shared is not None and self.shared_gate is not None:
            sh = self.shared
            extra = self.shared_gate.weight.nbytes + sum(
                lin.weight.nbytes for lin in (sh.gate, sh.up, sh.down)
            )
        return self.router.weight.nbytes + self.expert_bytes() + extra

    def _one_launch_ok(self, be: Backend, x: Tensor) -> bool:
        """Whether one token's MLP runs as one cooperative launch (toc_moe_step: router, top-k,
        experts, ordered combine and the shared expert behind two grid barriers)."""
        sh, sg = self.shared, self.shared_gate
        lins = [self.router] + ([sh.gate, sh.up, sh.down, sg] if sh and sg else [])
        si = sh.inter if sh is not None else 0

        def supported(lib: Any) -> int:
            return int(
                lib.toc_moe_step_supported(
                    self.num_experts, self.k, x.shape[1], self.experts[0].inter, si, x.dtype
                )
            )

        return self.step_ok(be, x, "moe_step", lins, supported)

    def _one_launch(self, be: Backend, x: Tensor, out: Tensor) -> Tensor:
        hidden, e, k = x.shape[1], self.num_experts, self.k
        inter = self.experts[0].inter
        sh, sg = self.shared, self.shared_gate
        si = sh.inter if sh is not None else 0
        gate_t, up_t, down_t = self.pointer_tables(be)
        logits = be.scratch("moe.logits1", (1, e + (1 if sh else 0)), x.dtype)
        idx = be.scratch("moe.idx", (1, k), DType.int32)
        weights = be.scratch("moe.weights", (1, k), x.dtype)
        h = be.scratch("moe.h_step", (1, k * inter + si), x.dtype)
        shared: list[int | None] = [None, None, None, None, 0]
        if sh is not None and sg is not None:
            shared = [sh.gate.weight.data_ptr, sh.up.weight.data_ptr, sh.down.weight.data_ptr]
            shared += [sg.weight.data_ptr, si]
        be.call(
            "moe_step",
            x.data_ptr, None, 0, 0.0, self.router.weight.data_ptr, e, k, int(self.renormalize),
            gate_t.data_ptr, up_t.data_ptr, down_t.data_ptr, hidden, inter, *shared, None,
            logits.data_ptr, idx.data_ptr, weights.data_ptr, h.data_ptr, out.data_ptr, x.dtype,
        )  # fmt: skip
        return out

    def __call__(self, be: Backend, x: Tensor, out: Tensor) -> Tensor:
        t = x.shape[0]
        e, k = self.num_experts, self.k
        if self._one_launch_ok(be, x):
            return self._one_launch(be, x, out)
        logits = be.scratch("moe.logits", (t, e), x.dtype)
        self.router(be, x, logits)
        idx = be.scratch("moe.idx", (t, k), DType.int32)
        weights = be.scratch("moe.weights", (t, k), x.dtype)
        be.call(
            "moe_route_softmax",
            logits.data_ptr,
            t,
            e,
            k,
            int(self.renormalize),
            logits.dtype,
            idx.data_ptr,
            weights.data_ptr,
            weights.dtype,
        )
        self.run_experts(be, x, idx, weights, out)
        if self.shared is not None and self.shared_gate is not None:
            hidden = x.shape[1]
            sh = be.scratch("moe.shared", (t, hidden), x.dtype)
            self.shared(be, x, sh)
            g = be.scratch("moe.shared_gate", (t, 1), x.dtype)
            self.shared_gate(be, x, g)
            be.call("sigmoid", g.data_ptr, g.data_ptr, t, x.dtype)
            be.call("mul_rows", sh.data_ptr, g.data_ptr, sh.data_ptr, t, hidden, x.dtype, x.dtype)
            be.call("add", out.data_ptr, sh.data_ptr, out.data_ptr, t * hidden, x.dtype)
        return out


class SigmoidTopKMoE(RoutedExperts):
    """GLM-4.7-Flash (DeepSeek-V3 lineage): fp32 router logits (the input widened to fp32),
    sigmoid scores, the experts chosen by score + ``bias`` within the ``topk_group`` best of
    ``n_group`` groups, their scores (without the bias) renormalised with +1e-20 when asked and
    times ``scaling``, kept in fp32; then the routed sum plus a shared SwiGLU expert, added in
    the activation dtype (``routed + shared``, transformers' order)."""

    def __init__(
        self,
        router: Linear,
        bias: Tensor,
        experts: Sequence[SwiGLU],
        k: int,
        *,
        n_group: int = 1,
        topk_group: int = 1,
        renormalize: bool = True,
        scaling: float = 1.0,
        shared: SwiGLU | None = None,
    ) -> None:
        e = len(experts)
        if router.out_features != e:
            raise ValueError(f"router has {router.out_features} outputs for {e} experts")
        if bias.shape != (e,) or bias.dtype != DType.float32:
            raise ValueError(
                f"the router bias must be float32 [{e}], got {bias.dtype.name} {bias.shape}"
            )
        if n_group < 1 or e % n_group or not 1 <= topk_group <= n_group:
            raise ValueError(
                f"n_group {n_group} must divide the {e} experts and "
                f"1 <= topk_group {topk_group} <= n_group"
            )
        if k > topk_group * (e // n_group):
            raise ValueError(f"k={k} exceeds the experts of {topk_group} groups")
        super().__init__(experts, k, router.in_features)
        if shared is not None and (
            shared.gate.in_features != router.in_features
            or shared.down.out_features != router.in_features
        ):
            raise ValueError("the shared expert does not map the hidden size to itself")
        self.router, self.bias, self.shared = router, bias, shared
        self.n_group, self.topk_group = n_group, topk_group
        self.renormalize, self.scaling = renormalize, float(scaling)

    def decode_weight_bytes(self) -> int:
        """Weight bytes one token reads: router, bias, k of the E experts and the shared one."""
        shared = self.shared
        extra = (
            sum(lin.weight.nbytes for lin in (shared.gate, shared.up, shared.down))
            if shared is not None
            else 0
        )
        return self.router.weight.nbytes + self.bias.nbytes + self.expert_bytes() + extra

    def _try_one_launch(self, be: Backend, x: Tensor, out: Tensor) -> bool:
        """One token's MLP as one cooperative launch (toc_moe_step_sigmoid) where it runs; False
        (nothing done) otherwise."""
        sh = self.shared
        si = sh.inter if sh is not None else 0
        hidden, e, k = x.shape[1], self.num_experts, self.k
        inter = self.experts[0].inter

        def supported(lib: Any) -> int:
            return int(
                lib.toc_moe_step_sigmoid_supported(
                    e, k, self.n_group, self.topk_group, hidden, inter, si, x.dtype
                )
            )

        lins = [self.router] + ([sh.gate, sh.up, sh.down] if sh is not None else [])
        if not self.step_ok(be, x, "moe_step_sigmoid", lins, supported):
            return False
        gate_t, up_t, down_t = self.pointer_tables(be)
        f32 = DType.float32
        logits = be.scratch("moe.logits32", (1, e), f32)
        idx = be.scratch("moe.idx", (1, k), DType.int32)
        weights = be.scratch("moe.weights32", (1, k), f32)
        h = be.scratch("moe.h_step", (1, k * inter + si), x.dtype)
        shared: list[int | None] = [None, None, None, 0]
        if sh is not None:
            shared = [sh.gate.weight.data_ptr, sh.up.weight.data_ptr, sh.down.weight.data_ptr, si]
        be.call(
            "moe_step_sigmoid",
            x.data_ptr, None, 0, 0.0, self.router.weight.data_ptr, self.bias.data_ptr, e, k,
            self.n_group, self.topk_group, int(self.renormalize), self.scaling,
            gate_t.data_ptr, up_t.data_ptr, down_t.data_ptr, hidden, inter, *shared, None,
            logits.data_ptr, idx.data_ptr, weights.data_ptr, h.data_ptr, out.data_ptr, x.dtype,
        )  # fmt: skip
        return True

    def __call__(self, be: Backend, x: Tensor, out: Tensor) -> Tensor:
        t, hidden = x.shape
        e, k = self.num_experts, self.k
        if self._try_one_launch(be, x, out):
            return out
        f32 = DType.float32
        x32 = x
        if x.dtype != f32:  # transformers widens the input and the router weight to fp32
            x32 = be.scratch("moe.x32", (t, hidden), f32)
            be.call("cast", x.data_ptr, x.dtype, x32.data_ptr, f32, t * hidden)
        logits = be.scratch("moe.logits32", (t, e), f32)
        self.router(be, x32, logits)
        idx = be.scratch("moe.idx", (t, k), DType.int32)
        weights = be.scratch("moe.weights32", (t, k), f32)
        be.call(
            "moe_route_sigmoid",
            logits.data_ptr,
            self.bias.data_ptr,
            t,
            e,
            k,
            self.n_group,
            self.topk_group,
            int(self.renormalize),
            self.scaling,
            f32,
            idx.data_ptr,
            weights.data_ptr,
        )
        self.run_experts(be, x, idx, weights, out)
        if self.shared is not None:
            sh = be.scratch("moe.shared", (t, hidden), x.dtype)
            self.shared(be, x, sh)
            be.call("add", out.data_ptr, sh.data_ptr, out.data_ptr, t * hidden, x.dtype)
        return out
