#!/usr/bin/env bash
# A/B timing of CUDA library builds in one call on the GPU machine: builds the working tree
# ("base") and each variant in parallel, optionally runs the GPU tests against one build, then
# times the fused decode step of every build in alternation, ROUNDS times, and prints the median
# tok/s of each build with its ratio to base. Builds alternate so that drift on a shared machine
# hits all of them alike; compare only numbers from one run.
#
#   VARIANTS="name=FLAGS name2=dir:PATH" [ROUNDS=2] [MODELS=0.6b,4b] [TESTS=name] \
#     bash benchmarks/gpu_ab.sh
#
#   name=FLAGS     the working tree's native/ built with CMAKE_CUDA_FLAGS=FLAGS (commas for
#                  spaces), e.g. u6=-DDK_U=6 or both=-DA=1,-DB=2
#   name=dir:PATH  another native/ tree, e.g. one exported before the call with
#                  `git archive <ref> native | tar -x -C ab/<ref>` (the GPU machine gets a copy of
#                  the working tree; untracked, not ignored files travel with it; do not rely on
#                  git there)
#   TESTS=name     run tests/gpu against that build first (base: the working tree)
#   PROMPT=N       context before the timed tokens (default 32: the attention folds into o_proj)
#   CHECK=1        in the first round, each build's fused-step logits at the real sizes are also
#                  compared with the multi-kernel step's (CHECK lines; no rate if they differ)
set -uo pipefail
ROUNDS=${ROUNDS:-2}
MODELS=${MODELS:-0.6b,4b}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
B=(-G Ninja -DTENSOR_OPS_CUDA=ON -DTENSOR_OPS_TESTS=OFF "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90a}")
declare -A LIB
NAMES=(base)
build() { # name source-dir build-dir [cuda flags]
  local log=/tmp/gpu-ab-$1.log
  if cmake -S "$2" -B "$3" "${B[@]}" ${4:+"-DCMAKE_CUDA_FLAGS=$4"} >"$log" 2>&1 && cmake --build "$3" >>"$log" 2>&1; then
    echo "built $1"
  else
    echo "BUILD FAILED: $1"; tail -20 "$log"
  fi
}
build base native build-ab/base &
LIB[base]=$PWD/build-ab/base/libtensor_ops.so
for kv in ${VARIANTS:-}; do
  name=${kv%%=*}; spec=${kv#*=}
  NAMES+=("$name")
  if [[ $spec == dir:* ]]; then
    build "$name" "${spec#dir:}" "build-ab/$name" &
  else
    build "$name" native "build-ab/$name" "${spec//,/ }" &
  fi
  LIB[$name]=$PWD/build-ab/$name/libtensor_ops.so
done
wait
export PYTHONPATH=$PWD/core:$PWD/plugins/qwen3_0_6b:$PWD/plugins/qwen3_4b_instruct_2507:$PWD/benchmarks
if [ -z "${INFERENCE_PIO_CUBLAS:-}" ]; then
  c=$(python3 -c "import glob,sys;p=[g for s in sys.path for g in glob.glob(s+'/nvidia/cu*/lib/libcublas.so.*')+glob.glob(s+'/nvidia/cublas/lib/libcublas.so.*')];print(p[0] if p else '')" 2>/dev/null)
  [ -n "$c" ] && export INFERENCE_PIO_CUBLAS=$c
fi
if [ -n "${TESTS:-}" ]; then
  echo "tests/gpu with $TESTS:"
  INFERENCE_PIO_LIB=${LIB[$TESTS]} timeout 400 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -2
fi
out=/tmp/gpu-ab-rates.txt; : > "$out"
for r in $(seq "$ROUNDS"); do
  for n in "${NAMES[@]}"; do
    [ -f "${LIB[$n]}" ] || continue
    extra=()
    [ "$r" = 1 ] && [ -n "${CHECK:-}" ] && extra=(--check)
    INFERENCE_PIO_LIB=${LIB[$n]} timeout 300 python3 benchmarks/gpu_decode_rate.py "$n" --models "$MODELS" --prompt "${PROMPT:-32}" \
      "${extra[@]}" >/tmp/gpu-ab-run.log 2>&1
    grep '^CHECK' /tmp/gpu-ab-run.log
    grep '^RATE' /tmp/gpu-ab-run.log | tee -a "$out" || { echo "no rate for $n:"; tail -3 /tmp/gpu-ab-run.log; }
  done
done
python3 - "$out" <<'EOF'
import statistics, sys
rates: dict[str, dict[str, list[float]]] = {}
for line in open(sys.argv[1]):
    f = line.split()
    for m, v in zip(f[2::2], f[3::2]):
        rates.setdefault(f[1], {}).setdefault(m, []).append(float(v))
base = rates.get("base", {})
if not base:
    sys.exit("no rates for base")
print(f"{'build':12s} " + " ".join(f"{m + ' tok/s':>12s} {'x base':>7s}" for m in base))
for name, per in rates.items():
    cells = []
    for m in base:
        v = statistics.median(per.get(m, [0.0]))
        b = statistics.median(base[m])
        cells.append(f"{v:12.1f} {v / b:7.3f}")
    print(f"{name:12s} " + " ".join(cells))
EOF
