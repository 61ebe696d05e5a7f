#!/usr/bin/env bash
# Set up nunet and filter the bundled samples into ./out/ with the default model.
#
#   bash quickstart.sh          install, then filter samples/ into out/
#   bash quickstart.sh --test   install with the test extras, then check the code (ruff) and run the tests
#
# Where: the active virtual environment (or conda env) if there is one, else ./.venv (created here;
# Debian's and Ubuntu's system Python refuse 'pip install' outside one).
# Which torch: NUNET_TORCH=cpu (the CPU build, ~200 MB) or cuda (PyPI's CUDA build, several GB);
# by default cuda where nvidia-smi finds a GPU, else cpu. NUNET_TORCH=keep leaves an installed torch.
set -euo pipefail
cd "$(dirname "$0")"
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

step() { printf '\n==> %s\n' "$*"; }

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PYTHON=python
    step "using the active environment ($(command -v python))"
else
    if [ ! -x .venv/bin/python ]; then
        step "creating a virtual environment in .venv"
        python3 -m venv .venv
    fi
    PYTHON=.venv/bin/python
    step "using .venv (activate it with: source .venv/bin/activate)"
fi
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check --progress-bar on "$@"; }

choice=${NUNET_TORCH:-}
if [ -z "$choice" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then choice=cuda; else choice=cpu; fi
fi
case "$choice" in
    cpu)
        step "installing torch $TORCH_VERSION, CPU build (NUNET_TORCH=cuda for the CUDA build)"
        # PyTorch's CPU index; where it cannot be reached, pip's configured find-links or PyPI
        pip_install --retries 1 --index-url "$CPU_INDEX" "torch==$TORCH_VERSION" \
            || pip_install "torch==$TORCH_VERSION" ;;
    cuda)
        step "installing torch $TORCH_VERSION, CUDA build from PyPI (several GB; NUNET_TORCH=cpu for the CPU build)"
        pip_install "torch==$TORCH_VERSION" ;;
    keep)
        step "keeping the installed torch" ;;
    *)
        echo "NUNET_TORCH must be cpu, cuda or keep, not '$choice'" >&2
        exit 2 ;;
esac
# -W: torch warns that NumPy is missing when it is not installed yet (nunet brings it next)
"$PYTHON" -W ignore::UserWarning -c 'import torch; print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'

if [ "${1:-}" = "--test" ]; then
    step "installing nunet with the test, bioimageio, zarr and napari extras and the stardist package's test images (no dependencies)"
    pip_install -e ".[test,bioimageio,zarr,napari]"
    pip_install --no-deps stardist==0.9.2
    step "checking the code with ruff (lint and format)"
    "$PYTHON" -m ruff check .
    "$PYTHON" -m ruff format --check .
    step "checking the architecture's layers with import-linter (pyproject.toml: tool.importlinter)"
    "$PYTHON" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'
    step "running the tests"
    exec "$PYTHON" -m pytest
fi

step "installing nunet"
pip_install -e .
step "filtering samples/ into out/"
"$PYTHON" -m nunet batch samples out --report out/report.json "$@"
echo "done: out/ holds the filtered images, out/report.json what happened to each file"
