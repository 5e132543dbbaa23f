"""SwiGLU MLP: ``down(silu(gate(x)) ⊙ up(x))``."""

from __future__ import annotations

from inference_pio.backend import Backend
from inference_pio.nn.layers import Linear, LinearGroup
from inference_pio.tensor import Tensor


class SwiGLU:
    """The MLP of every text model here (dense layers, experts, shared experts)."""

    #: Decode plans may replay this block: its native calls never depend on the step.
    replayable = True
    #: A CUDA decode step may be captured with this block (nn.cuda_capture).
    cuda_capturable = True

    def __init__(self, gate: Linear, up: Linear, down: Linear) -> None:
        if gate.out_features != up.out_features or down.in_features != gate.out_features:
            raise ValueError("SwiGLU: gate/up/down shapes do not fit together")
        self.gate, self.up, self.down = gate, up, down
        self.inter = gate.out_features
        self._gate_up = LinearGroup([gate, up])
        # the fused gate/up kernel reads plain weights (an FP8 pair runs as two linears)
        self._same_dtype = gate.weight.dtype == up.weight.dtype and not (
            gate.quantized or up.quantized
        )

    def __call__(self, be: Backend, x: Tensor, out: Tensor) -> Tensor:
        rows = x.shape[0]
        g = be.scratch("mlp.gate", (rows, self.inter), x.dtype)
        u = be.scratch("mlp.up", (rows, self.inter), x.dtype)
        if self._same_dtype and be.has("gate_up_swiglu"):
            # one call (on CUDA one kernel for up to 16 rows), the bits of the two calls below
            be.call(
                "gate_up_swiglu",
                x.data_ptr,
                self.gate.weight.data_ptr,
                self.up.weight.data_ptr,
                g.data_ptr,
                u.data_ptr,
                g.data_ptr,
                rows,
                self.inter,
                x.shape[1],
                x.shape[1],
                x.dtype,
                self.gate.weight.dtype,
                x.dtype,
            )
            return self.down(be, g, out)
        self._gate_up(be, x, (g, u))
        be.call(
            "swiglu",
            g.data_ptr,
            u.data_ptr,
            g.data_ptr,
            rows,
            self.inter,
            self.inter,
            self.inter,
            self.inter,
            x.dtype,
        )
        return self.down(be, g, out)
