#!/usr/bin/env bash
# One prepared GPU command (issues 18 and 19), sized for one 10-minute device call on one H200:
#   1. python -m deep.bench's GPU preset, alone on the device (ratios: eager / graphed / reference, K-run
#      aggregate, % of bf16 peak);
#   2. the CUDA-graph tests on the device (graphed step against the eager step); the grid replays graphs only
#      if they pass (the bench's "CIFAR-10 epoch" column gives the time per epoch per method on CIFAR-shaped
#      data, from which deep.gridtime's projection of a whole grid follows);
#   3. the converged Fashion-MNIST grid (deep.run --profile converged) at full width (64) with K runs at once on
#      the one GPU, longest first, until its deadline; meanwhile the worst-case evaluation (PGD-10 + AutoAttack,
#      per image) of the CPU-trained converged runs carried in .gpu/cpu-models;
#   4. the worst-case evaluation of the GPU runs that finished;
#   4b. with GRID2_ARGS, a second grid in the same folder while phase 4 runs, then its evaluation;
#   5. everything (result JSONs with their evaluations, summaries, timing tables, logs; no checkpoints) packed
#      into $OUT/gpu_evidence.tgz, whatever finished.
# Every phase has a deadline measured from the start (BUDGET seconds in all), so the pack step always runs.
#
# Carried (ignored by git, named in the device call's carry): .gpu/data/fashion-mnist/*.gz (the idx files),
# .gpu/site/pyautoattack (AutoAttack's pure-Python package, without its example weights),
# .gpu/cpu-models/<folder>/ (result JSONs + checkpoints of the CPU runs to evaluate).
#
# Measured on one H200 (2026-12-04, results/converged/gpu/logs): the grid below does not fit one call with its
# defaults (AT's two seeds alone are ~280 s each with 5 runs sharing the GPU). What ran, in two calls:
#   call 1 (403 s): K=6 BUDGET=565 PLATEAU= GRID_ARGS="--methods st,sam --rho 0.1 --seeds 0,1,2 --threads 2"
#                   GRID2_ARGS="--rho 0.2 --plateau-check st_*" (+ a 50-s bench, --concurrency off)
#                   -> 6 runs in 160 s, then 4 more in 142 s;
#   call 2 (333 s): K=5 PLATEAU="sam_*" GRID_ARGS="--methods sam,at --rho 0.05 --seeds 0,1,2 --at-seeds 0"
#                   -> 5 runs in 298 s.
# Leave about 100 s of BUDGET for phase 4 (AutoAttack on 500 images per run, three processes).
#
# CPU dry run of the same script (lanes of a busy CPU starve it: it runs under setsid):
#   DEVICE=cpu K=2 WIDTH=4 BUDGET=150 BENCH_CMD=true GRAPH_TEST=true PLATEAU= \
#   GRID_ARGS="--n-train 512 --n-test 200 --epochs 1 --methods st,sam --seeds 0,1 --threads 1" scripts/gpu_evidence.sh
# tests/test_deep_converged.py checks its syntax and that every deep.run / deep.evaluate call passes --data-dir.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/gpu-out}
WORK=${WORK:-/tmp/gpu-work}
BUDGET=${BUDGET:-575}             # seconds for the whole script (the device call's limit is 600)
DEVICE=${DEVICE:-cuda}
K=${K:-8}                         # grid runs at once on the device
WIDTH=${WIDTH:-64}
EPOCHS=${EPOCHS:-12}              # the profile's 24 (the CPU headline) do not fit one device call at width 64
N_AA=${N_AA:-500}                 # images of the worst case with AutoAttack's APGD-CE + APGD-T
N_STD=${N_STD:-200}               # images of the worst case with the standard AutoAttack (with Square)
RADII=${RADII:-linf:0.02,linf:0.05}
PLATEAU=${PLATEAU-st_*,sam_rho0.1_*}  # runs doubled for the plateau test (empty: none)
GRID_ARGS=${GRID_ARGS:-}          # extra deep.run options (dry runs: smaller data and epochs)
GRID2_ARGS=${GRID2_ARGS:-}        # deep.run options of a second grid, run while phase 4 evaluates the first
K2=${K2:-4}                       # its runs at once (what finishes by the deadline is kept and evaluated)
GRID2_EVAL=${GRID2_EVAL:-}        # run globs of the second grid to evaluate (worst case, N_AA images)
EVAL1=${EVAL1:-st_*,at_*}         # phase 4: three evaluation processes over these run globs of the grid
EVAL2=${EVAL2:-sam_rho0.05_*,sam_rho0.2_*}
EVAL3=${EVAL3:-sam_rho0.1_*}
EVAL_STD=${EVAL_STD:-st_s0,sam_rho0.1_s0}  # runs given the standard AutoAttack worst case (N_STD images)
GRAPH_S=${GRAPH_S:-75}            # seconds for the CUDA-graph tests
BENCH_S=${BENCH_S:-80}
BENCH_CMD=${BENCH_CMD:-python3 -m deep.bench --device cuda --gpu-quick --no-progress --out $WORK/deep_bench_h200_quick.json}
GRAPH_TEST=${GRAPH_TEST:-python3 -m pytest -q -s -p no:cacheprovider tests/test_deep_graphed.py -k cuda}
EVAL_TAIL_S=${EVAL_TAIL_S:-100}   # seconds kept after the grid's deadline for phase 4 and the pack
CPU_MODELS=${CPU_MODELS:-.gpu/cpu-models}
DATA_DIR=${DATA_DIR:-.gpu/data}   # the idx files, for every deep.run and deep.evaluate below (the device has no
                                  # Debian package to fall back on: 2026-12-04 phase 4 failed without it)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
[ -d .gpu/site ] && export PYTHONPATH=$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
phase() { echo "[$(elapsed) s] $*" | tee -a "$WORK/timing.txt"; }

pack() {
    phase "pack"
    mkdir -p "$CPU_MODELS"
    tar --exclude='*.pt' -czf "$OUT/gpu_evidence.tgz" -C "$WORK" . -C "$(cd "$CPU_MODELS/.." && pwd)" \
        "$(basename "$CPU_MODELS")" && ls -la "$OUT"
}
trap pack EXIT

phase "start: device $DEVICE, K $K, width $WIDTH, budget $BUDGET s"
{ nvidia-smi 2>&1 | head -15; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"; } > "$WORK/env.txt" 2>&1

# 1. bench, alone on the device
phase "bench ($BENCH_S s at most): $BENCH_CMD"
setsid -w timeout -k 5 "$BENCH_S" $BENCH_CMD > "$WORK/bench.log" 2>&1 &
B=$!; wait $B; phase "bench exit $?"; kill -9 -- "-$B" 2>/dev/null   # its K processes too

# 1b. the CUDA-graph step against the eager step on this GPU; the grid replays graphs only if that holds
timeout "$GRAPH_S" $GRAPH_TEST > "$WORK/graph_test.log" 2>&1; GT=$?; phase "graph test exit $GT"
GRAPH_FLAG=""
[ "$GT" -eq 0 ] && [ "$DEVICE" != cpu ] && GRAPH_FLAG="--cuda-graph"

# 2. (the time per epoch per method on CIFAR-shaped data is the bench's "CIFAR-10 epoch" column; the projected
#    time of a whole grid: python -m deep.gridtime, or epochs x runs x that column)

# 3. the full-width converged grid (background, deadline) and the CPU runs' worst case beside it
GRID_S=$(( $(left) - EVAL_TAIL_S ))
phase "grid: $GRID_S s ${GRAPH_FLAG:-eager}"
setsid -w timeout -s INT -k 15 "$GRID_S" python3 -m deep.run --profile converged --epochs "$EPOCHS" --width "$WIDTH" --device "$DEVICE" --jobs "$K" \
    ${PLATEAU:+--plateau-check "$PLATEAU"} --data-dir "$DATA_DIR" --out "$WORK/grid" --no-progress $GRAPH_FLAG $GRID_ARGS \
    > "$WORK/grid.log" 2>&1 &
GRID_PID=$!
GRID_END=$(( $(date +%s) + GRID_S ))

evaluate() {   # evaluate FOLDER ATTACKS N GLOBS DEADLINE LOGNAME: worst case of the matching runs until DEADLINE
    local s=$(( $5 - $(date +%s) ))  # (seconds since the epoch); N = 0 skips
    [ "$3" -gt 0 ] && [ "$s" -gt 3 ] || return 0
    timeout -s INT -k 10 "$s" python3 -m deep.evaluate "$1" --attacks "$2" --n "$3" --runs "$4" --radii "$RADII" --data-dir "$DATA_DIR" \
        --no-sanity --device "$DEVICE" --no-progress >> "$WORK/eval-$6.log" 2>&1
}
CPU_DIR=$(ls -d "$CPU_MODELS"/*/ 2>/dev/null | head -1)
if [ -n "$CPU_DIR" ]; then
    phase "worst case of the CPU runs in $CPU_DIR"
    ( evaluate "$CPU_DIR" worst:cpu "$N_AA" 'st_*,at_*' "$GRID_END" cpu1
      evaluate "$CPU_DIR" worst:standard "$N_STD" '*_s0' "$GRID_END" cpu1 ) &
    evaluate "$CPU_DIR" worst:cpu "$N_AA" 'sam_*' "$GRID_END" cpu2 &
fi
wait $GRID_PID; phase "grid exit $?"
kill -9 -- "-$GRID_PID" 2>/dev/null   # the grid's own process group (setsid): no orphaned job processes
wait

# 4. the GPU runs' worst case (whatever finished), three processes; meanwhile (GRID2_ARGS) a second grid in the same
#    folder (finished runs of the first are skipped), its finished runs evaluated after it
G="$WORK/grid/fashion-mnist-converged"
END4=$(( T0 + BUDGET - 15 ))
G2_PID=""
if [ -n "$GRID2_ARGS" ] && [ $(( GRID_END - $(date +%s) )) -gt "${G2_MIN_S:-60}" ]; then
    phase "second grid until the grid deadline: $GRID2_ARGS"
    setsid -w timeout -s INT -k 15 $(( GRID_END - $(date +%s) )) python3 -m deep.run --profile converged \
        --epochs "$EPOCHS" --width "$WIDTH" --device "$DEVICE" --jobs "$K2" --data-dir "$DATA_DIR" --out "$WORK/grid" --no-progress \
        $GRAPH_FLAG $GRID_ARGS $GRID2_ARGS > "$WORK/grid2.log" 2>&1 &
    G2_PID=$!
fi
phase "worst case of the GPU runs: $(( END4 - $(date +%s) )) s"
if [ -d "$G" ]; then
    evaluate "$G" worst:cpu "$N_AA" "$EVAL1" "$END4" gpu1 &
    evaluate "$G" worst:cpu "$N_AA" "$EVAL2" "$END4" gpu2 &
    ( evaluate "$G" worst:cpu "$N_AA" "$EVAL3" "$END4" gpu3
      evaluate "$G" worst:standard "$N_STD" "$EVAL_STD" "$END4" gpu3 ) &
    if [ -n "$G2_PID" ]; then
        wait "$G2_PID"; phase "second grid exit $?"; kill -9 -- "-$G2_PID" 2>/dev/null
        [ -n "$GRID2_EVAL" ] && evaluate "$G" worst:cpu "$N_AA" "$GRID2_EVAL" "$END4" gpu4
    fi
    wait
fi
python3 -m deep.gridtime --table "$G" > "$WORK/grid_timing.md" 2>&1
[ -d "$G/plateau" ] && python3 -m deep.gridtime --table "$G/plateau" >> "$WORK/grid_timing.md" 2>&1
phase "done"
