#!/usr/bin/env bash
# One-shot GPU check of the fast training engine, for a machine with one CUDA GPU
# (an H100 or H200: about 1 minute of tests, 3-5 minutes of benchmark, < 8 minutes in all).
# Installs nothing: needs torch (CUDA), numpy, pandas, scikit-learn, tqdm, pytest and
# pytest-timeout, which GPU images and Colab already have.
#
#   bash bench/run_gpu_check.sh [RESULT_DIR]     # default: $OUT when set, else v3_output/bench/
#
# 1. tests/test_fast_train.py, test_engine.py and test_trainer.py, whole: the CPU equivalence tests
#    run again under this machine's torch, and the CUDA-only ones (fused cell, CUDA-graph
#    training against the plain loop, no host syncs in a step or a replay, dropout masks in a
#    graph, a failed capture, with dropout too, the first group's check against the plain
#    loop on the real path) run here and only here;
# 2. bench/bench_gpu_training.py: the guide's 40-model job, plain loop vs fast engine (a
#    progress line every 10 epochs of the full job);
# 3. a short table from the benchmark's JSON.
# Logs and the JSON go to RESULT_DIR (never into bench/: v3_output/ is ignored by git).
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${OUT:-v3_output/bench}}"
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

"$PY" - <<'EOF' || exit 2
import torch
assert torch.cuda.is_available(), "no CUDA GPU is visible to torch: this check needs one"
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}; "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

echo "== tests (CPU equivalence + CUDA-only) =="
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_fast_train.py tests/test_engine.py \
    tests/test_trainer.py \
    2>&1 | tee "$DIR/gpu_check_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmark =="
timeout 300 "$PY" bench/bench_gpu_training.py --out "$DIR" \
    2>&1 | tee "$DIR/gpu_check_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== summary =="
"$PY" - "$DIR/bench_gpu_training.json" "$tests_rc" "$bench_rc" <<'EOF'
import json, sys
path, tests_rc, bench_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"tests: {'passed' if tests_rc == 0 else f'FAILED (exit {tests_rc})'}; "
      f"benchmark: {'finished' if bench_rc == 0 else f'exit {bench_rc} (124 = time limit)'}")
try:
    r = json.load(open(path))
except Exception as e:
    sys.exit(f"no benchmark JSON at {path} ({type(e).__name__})")
p, f = r.get("plain", {}), r.get("fast", {})
print(f"| card | {r.get('device_name')} (torch {r.get('torch')}, CUDA {r.get('cuda')}) |")
print(f"| command | `{r.get('command')}` |")
print(f"| plain loop, ms per model-step | {p.get('ms_per_model_step')} "
      f"({p.get('pairs')} pairs x {p.get('epochs')} epochs) |")
print(f"| plain loop, full job (projected) | {p.get('projected_full_job_s')} s |")
print(f"| fast engine, ms per model-step | {f.get('ms_per_model_step')} ({f.get('engine')}) |")
print(f"| fast engine, full job (measured) | {f.get('wall_s')} s, {f.get('models_per_s')} models/s |")
print(f"| speedup | {r.get('speedup')}x |")
print(f"| peak GPU memory | {f.get('peak_gpu_memory_gb')} GB |")
par = r.get("parity", {})
print(f"| parity (best val, {par.get('epochs')} epochs, 2 %) | "
      + ", ".join(f"{x['pair']} {100 * x['rel_diff']:+.2f} %" for x in par.get("pairs", []))
      + (" OK" if par.get("ok") else " FAILED") + " |")
print(f"| goal (<= 180 s, >= 10x, parity) | {'met' if r.get('goal', {}).get('met') else 'NOT met'} |")
EOF
exit $(( tests_rc != 0 || bench_rc != 0 ))
