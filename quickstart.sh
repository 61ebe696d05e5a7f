#!/usr/bin/env bash
# Install nunet (CPU torch first) and filter the bundled sample images into ./out/.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e .
# Until the trained models (nunet-w5 ... nunet-w10, default nunet-w8) ship, the quick start runs the
# clearly labelled untrained model: it checks the pipeline end to end, it does not enhance anything.
MODEL="nunet-w8"
nunet models | grep -q " ${MODEL} " || MODEL="nunet-untrained"
nunet-batch samples out --model "$MODEL" --report out/report.json "$@"
