#!/usr/bin/env bash
# Train several recipes side by side, each stopped after SECONDS of training, then (unless EVAL=0)
# compare their models with the default on DRAWS draws of the held-out suite (default 10: seeds 0-9;
# `nunet eval --draws`, whose draws.md gives each figure's 95% interval and difference to the tuned DoG).
#
# Usage: models/train_gpu.sh RUN_DIR SECONDS CONFIG.toml...
#
# Meant for one GPU lent for about 15 minutes (prepared configs: models/gpu_sweep/). There the
# network is cheap and each run's data sets the pace: the degraded synthetic crops are drawn on the
# CPU, about 0.1 s per batch of eight 144-px crops on one core, so each run gets one core
# (OMP_NUM_THREADS=1) and up to one run per core fits; a run first draws its banks (about 3 min on
# one core). Runs anywhere (on a CPU a step takes ~2 s). Each config's model is RUN_DIR/NAME/NAME.pt
# (NAME: the config's file name, given to `nunet train --set name=...`); logs in RUN_DIR/logs.
#   DEVICE  passed to every `nunet train` (default auto)
#   EVAL=0  train only (e.g. to bring the models back from a lent machine and evaluate them here)
#   DRAWS  draws of the held-out suite for the comparison (default 10)
#   REAL_DATA  the stardist wheel or a folder of its test images, where stardist is not installed
#   EVAL_OPTS  more options for every `nunet eval` (e.g. "--suite synthetic --n-images 1" for a check)
# On the lent machine (its python3 has torch and nunet's dependencies; nunet runs from the tree):
#   PYTHONPATH=. EVAL=0 bash models/train_gpu.sh /tmp/run 330 models/gpu_sweep/*.toml;
#   cp /tmp/run/*/sweep-*.pt /tmp/run/logs/*.log "$OUT"/
set -u
usage="usage: train_gpu.sh RUN_DIR SECONDS CONFIG.toml..."
run=${1:?$usage}
seconds=${2:?$usage}
shift 2
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$run/logs"
names=()
for config in "$@"; do
    name=$(basename "$config" .toml)
    names+=("$name")
    python3 -m nunet train --config "$config" --set name="$name" --set time_limit_s="$seconds" \
        --set output_dir="$run/$name" --set device="${DEVICE:-auto}" >"$run/logs/train-$name.log" 2>&1 &
done
wait
models=(-m nunet-v11 -m nunet-v10 -m nunet-v5)  # the default, the one before, and the parent of the sweep's runs
for name in "${names[@]}"; do
    if [ -f "$run/$name/$name.pt" ]; then
        models+=(-m "$run/$name/$name.pt")
        echo "$name: $(tail -n 1 "$run/$name/losses.csv")"
    else
        echo "$name: no model (see $run/logs/train-$name.log)"
    fi
done
[ "${EVAL:-1}" = 0 ] && exit 0
real=()
[ -n "${REAL_DATA:-}" ] && real=(--real-data "$REAL_DATA")
draws=${DRAWS:-10}
# shellcheck disable=SC2086 # EVAL_OPTS: several words
python3 -m nunet eval "$run/eval" --draws "$draws" "${models[@]}" "${real[@]}" ${EVAL_OPTS:-} \
    >"$run/logs/eval.log" 2>&1 || { echo "nunet eval failed (see $run/logs/eval.log)" >&2; exit 1; }
echo "== held-out suite, $draws draws"
cat "$run/eval/summary.md"
if [ "$draws" -gt 1 ]; then cat "$run/eval/draws.md"; fi
