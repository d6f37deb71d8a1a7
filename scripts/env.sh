# Sourced by the quickstart scripts: makes ./.venv once, installs kdcore and what it needs.
# Torch already importable (system site-packages) is kept; otherwise torch==2.13.0 is installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[${KDCORE_EXTRAS:-test}]"
