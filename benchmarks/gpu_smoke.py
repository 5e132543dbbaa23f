"""Quick CUDA smoke test with progress prints (diagnostics for hangs)."""

import faulthandler
import sys

faulthandler.dump_traceback_later(60, exit=True)
from inference_pio import cuda  # noqa: E402
from inference_pio.tensor import Tensor  # noqa: E402

print("avail", cuda.is_available(), cuda.unavailable_reason(), flush=True)
if not cuda.is_available():
    sys.exit(0)
print(cuda.device_info("cuda:0"), flush=True)
t = Tensor.from_list([1.0, 2.0, 3.0]).to("cuda")
print("to cuda ok", flush=True)
print(t.to("cpu").tolist(), flush=True)
from inference_pio import ops  # noqa: E402

print(ops.add(t, t).tolist(), flush=True)
x = Tensor.from_list([[1.0] * 64] * 3).to("cuda")
w = Tensor.from_list([1.0] * 64).to("cuda")
print(ops.rms_norm(x, w).to("cpu").tolist()[0][:4], flush=True)
print("stats", cuda.memory_stats(), flush=True)
print("blas", cuda.blas_library(), flush=True)
sys.exit(0)
