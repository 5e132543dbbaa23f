"""Per-kernel cost of the MoE multi-kernel graph step: replay time with each kernel left out."""
import sys, time
sys.path.insert(0, "benchmarks")
from gpu_moe_bench import build_ours, config
from inference_pio import cuda
from inference_pio.nn.cuda_graph import CudaGraphDecoder

layers = int(sys.argv[1]) if len(sys.argv) > 1 else 12
model = build_ours(config(layers))
cap = 256
base = CudaGraphDecoder(model, cap)
prompt = list(range(1000, 1032))
model.forward([(prompt, base.cache)])

def rate(r):
    r.greedy(5, 32, 8)
    cuda.synchronize("cuda:0")
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for c in range(3):
            r.greedy(5, 32 + 32 * c, 32)
        cuda.synchronize("cuda:0")
        best = min(best, (time.perf_counter() - t0) / 96)
    return best * 1e3

full = rate(base)
print(f"layers {layers}: full step {full:.3f} ms ({full / layers * 1e3:.1f} us a layer)")
for k in ["qkv", "qk_rope_append", "attention_decode", "o_proj", "moe_router", "moe_route", "moe_gate_up", "moe_down", "moe_combine", "lm_head"]:
    r = CudaGraphDecoder(model, cap, skip=[k])
    t = rate(r)
    print(f"  without {k:18} {t:.3f} ms  -> {(full - t) / layers * 1e3:6.2f} us a layer")
    del r
