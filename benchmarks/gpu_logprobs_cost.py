"""Device time of a logprobs entry (log_softmax + top-k + copies) on a vocabulary-sized row."""

import random
import time

from inference_pio import ops
from inference_pio.logprobs import token_logprobs
from inference_pio.tensor import Tensor

rnd = random.Random(0)
row = Tensor.from_list([rnd.gauss(0, 3) for _ in range(151936)]).to("cuda").to("bfloat16")
for k in (0, 5, 20):
    for _ in range(5):
        token_logprobs(row, 7, k)
    t = time.perf_counter()
    for _ in range(100):
        token_logprobs(row, 7, k)
    print(f"token_logprobs k={k:2d}: {(time.perf_counter() - t) * 10:.3f} ms a token")
lp = ops.log_softmax(row, out_dtype="float32")
for k in (5, 20):
    ops.topk(lp, k)[0].to("cpu")
    t = time.perf_counter()
    for _ in range(100):
        ops.topk(lp, k)[0].to("cpu")
    print(f"topk alone k={k:2d}: {(time.perf_counter() - t) * 10:.3f} ms")
