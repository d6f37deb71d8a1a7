#!/usr/bin/env bash
# The main job on the embedded default.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m kdcore demo "$@"
