#!/usr/bin/env bash
# Fills .gpu/ with what benchmarks/gpu.sh needs on the device tool's GPU image, which has torch,
# accelerate, numpy, scipy, matplotlib, numba, scikit-learn, ... but no audio or music packages, an
# older transformers and no network: .gpu/wheels/ (Python 3.12, x86-64 Linux, at the versions this
# checkout's .venv was tested with) and .gpu/melodies-1024/ (the training benchmark's dataset, so no
# device minutes go to rendering and encoding it). Run it here, where PyPI is reachable; the device
# call is then `benchmarks/gpu.sh PART` with carry [".gpu"] (about 50 MB of the 64 MiB allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${WHEEL_PYTHON:-3.12}
# Each package with the ones it needs at import that the image lacks; transformers is carried at
# our tested version because Dia's cache and attention code moves between its releases (the
# image's huggingface_hub and tokenizers satisfy it).
names=(
  transformers
  librosa audioread pooch platformdirs soxr decorator soundfile cffi pycparser
  music21 chardet jsonpickle more-itertools webcolors
  mir_eval pretty_midi mido importlib_resources tinysoundfont
  torchao
)
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
rm -rf .gpu/wheels && mkdir -p .gpu/wheels
for name in "${names[@]}"; do
  version=$($PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d .gpu/wheels "$name==$version"
done
[ -f .gpu/melodies-1024/card.json ] || PYTHONPATH=src:benchmarks $PY -c \
  "from pathlib import Path; from train_speed import dataset; dataset(Path('.gpu/melodies-1024'), 60)"
[ -f .gpu/melodies-1024-stereo/card.json ] || PYTHONPATH=src:benchmarks $PY -c \
  "from pathlib import Path; from train_speed import dataset; dataset(Path('.gpu/melodies-1024-stereo'), 30, 'stereo')"
du -sh .gpu/wheels .gpu/melodies-1024 .gpu/melodies-1024-stereo
