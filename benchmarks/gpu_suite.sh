#!/usr/bin/env bash
# The GPU suite (issue 13): CUDA correctness, P1-P3 speed vs peers, work-precision at GPU batch
# sizes, per-sample stepping vs torchode, MNIST ODE-Net step time and peak memory per gradient
# mode, torch.compile speed-ups. Sized for <= 8 minutes on one recent GPU (each part has its own
# timeout so that one slow part cannot eat the rest); prints one table at the end.
#
#   benchmarks/gpu_suite.sh                 # on a machine with CUDA
#   benchmarks/gpu_suite.sh --dry-run       # the whole script on CPU, small sizes (= DEVICE=cpu QUICK=1),
#                                           # time limits x SLOW (default 6): proves the script runs
#
# Never required by the tests; the project builds and tests without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
SLOW=${SLOW:-1}
for arg in "$@"; do
    case "$arg" in
        --dry-run) DEVICE=cpu; QUICK=1; SLOW=${SLOW_DRY_RUN:-6} ;;
        --device=*) DEVICE=${arg#--device=} ;;
        *) echo "unknown argument $arg (valid: --dry-run, --device=cpu|cuda)" >&2; exit 2 ;;
    esac
done
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: run with --dry-run (CPU) or on a GPU machine" >&2
    exit 2
fi
if [ "$DEVICE" = cpu ]; then export OMP_NUM_THREADS=1; fi
OUT=${OUT:-runs/gpu_suite}
mkdir -p "$OUT"
TABLE="$OUT/table.txt"
: > "$TABLE"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

part() {  # part NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, note failures in the table
    local name=$1 limit=$(( $2 * SLOW ))
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    printf '%-58s %16s  %s\n' "[$name] exit status / seconds" "$rc / $((SECONDS - start))" \
        "$([ $rc -eq 0 ] && echo ok || echo "FAILED, see $OUT/$name.log")" >> "$TABLE"
}

"$PY" - <<'EOF' | tee -a "$TABLE"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"{'torch ' + torch.__version__ + ', device':58s} {name:>16s}")
EOF

if [ "$QUICK" = 1 ]; then SMALL=1; else SMALL=0; fi

# 1. Correctness on the device: exact solutions, device vs CPU, gradcheck per gradient mode,
#    per-sample stepping, host syncs per step (set_sync_debug_mode).
part correctness 90 "$PY" benchmarks/gpu_checks.py correctness --device "$DEVICE" --table "$TABLE"

# 2. P1-P3: forward solve and adjoint training step vs torchdiffeq/torchdyn (the adjoint
#    benchmark takes --device; the MNIST block is P3).
part adjoint 120 "$PY" benchmarks/bench_adjoint.py --device "$DEVICE" --repeats $([ $SMALL = 1 ] && echo 2 || echo 9) \
    --mnist-repeats $([ $SMALL = 1 ] && echo 1 || echo 3)
grep -E "^(neuralode|torchdiffeq|torchdyn)|PASS|FAIL" "$OUT/adjoint.log" | sed 's/^/[adjoint] /' >> "$TABLE"

# 3. Work-precision at GPU batch sizes (--full: batch 512/512/128), peers on the same device.
part work_precision 150 "$PY" benchmarks/bench_work_precision.py --device "$DEVICE" \
    $([ $SMALL = 1 ] && echo "--problems vdp --tols 1e-3 1e-5" || echo "--full --problems mlp cnf odenet --tols 1e-3 1e-5 1e-7") \
    --repeats 3 --out "$OUT/work_precision"
grep -E "best-of-ours|target" "$OUT/work_precision.log" | sed 's/^/[work-precision] /' >> "$TABLE"

# 4. Per-sample stepping vs torchode: 256 Van der Pol with mu log-uniform in [0.1, 10]; per-sample grids.
part persample 60 "$PY" benchmarks/bench_persample.py --device "$DEVICE" --batch $([ $SMALL = 1 ] && echo 16 || echo 256)
grep -E "^(neuralode|torchode)" "$OUT/persample.log" | sed 's/^/[per-sample] /' >> "$TABLE"

# 5. MNIST ODE-Net training step time and peak CUDA memory per gradient mode.
part mnist 60 "$PY" benchmarks/gpu_checks.py mnist --device "$DEVICE" --steps $([ $SMALL = 1 ] && echo 1 || echo 5) --table "$TABLE"

# 6. torch.compile: compiled steps vs eager, compile time, recompilations.
part compile 90 "$PY" benchmarks/gpu_checks.py compile --device "$DEVICE" --table "$TABLE" \
    --batch $([ $SMALL = 1 ] && echo 256 || echo 4096) $([ $SMALL = 1 ] && echo "--backend aot_eager --repeats 2")

# 7. Whole fixed-step solves as one graph (FixedGridSolve), with CUDA graphs on a GPU
#    (mode reduce-overhead); the compiled adaptive step on the MLP problem.
part compile_whole 120 "$PY" benchmarks/bench_compile.py --device "$DEVICE" --steps $([ $SMALL = 1 ] && echo 5 || echo 50) \
    --repeats $([ $SMALL = 1 ] && echo 2 || echo 7) $([ "$DEVICE" = cuda ] && echo "--mode reduce-overhead") \
    $([ $SMALL = 1 ] && echo "--backend aot_eager")
grep -E "^(eager|rk4_compiled|FixedGridSolve|dopri5_compiled)" "$OUT/compile_whole.log" | sed 's/^/[compile] /' >> "$TABLE"

echo
echo "================================ GPU suite ================================"
cat "$TABLE"
