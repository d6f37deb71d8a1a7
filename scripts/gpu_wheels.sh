#!/usr/bin/env bash
# Downloads (here, with network) the wheels that kdcore and its GPU check need beyond what the GPU
# machine already holds (torch, triton, torchaudio, numpy, pytest, pytest-benchmark, pytest-xdist,
# hypothesis, scipy, scikit-learn, numba, tqdm, pyyaml, ninja, requests, ...), into .whl/ (git
# ignored), for Linux x86_64 and the GPU machine's CPython (3.12 unless GPU_PYTHON says
# otherwise). scripts/gpu_check.sh installs them there with --no-index --no-deps; carry .whl.
#
#   bash scripts/gpu_wheels.sh                 # -> .whl/*.whl
#   GPU_PYTHON="3.11 3.12 3.13" bash scripts/gpu_wheels.sh
#
# Why each: soundfile, soxr (kdcore.data imports both; soundfile needs cffi -> pycparser);
# librosa, audioread, decorator, pooch, platformdirs (a test module imports librosa at its top,
# and a collection error would stop the CUDA test run); liger-kernel (the Liger KL/JSD baseline
# of benchmarks/gpu_losses.py). Never torch, triton, numpy or anything that pulls them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PYTHON="${PYTHON_FOR_PIP:-.venv/bin/python}"
DEST="${WHEEL_DIR:-.whl}"
mkdir -p "$DEST"

BINARY=("soundfile==0.14.0" "soxr==1.1.0" "cffi==2.0.0")
PURE=("pycparser==3.0" "librosa==0.11.0" "audioread==3.1.0" "decorator==5.2.1"
      "pooch==1.9.0" "platformdirs==4.14.9" "liger-kernel==0.8.5")

PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

for version in ${GPU_PYTHON:-3.12}; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
        --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "${PURE[@]}"
ls -l "$DEST"
du -sh "$DEST"
