#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU; Triton kernels run under TRITON_INTERPRET=1 without a GPU).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m ruff check .
python -m pytest "$@"
