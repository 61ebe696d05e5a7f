#!/usr/bin/env bash
# Install nunet (CPU torch first) and filter the bundled sample images into ./out/.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e .
nunet-batch samples out --model nunet-w8 --report out/report.json "$@"
