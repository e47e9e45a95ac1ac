#!/usr/bin/env bash
# Fills .whl/ with wheels of what diamusic needs beyond a GPU machine's image (which has torch,
# accelerate, numpy, scipy, matplotlib, numba, scikit-learn, ... but no audio or music packages and
# an older transformers), for Python 3.12 on x86-64 Linux, at the versions this checkout's .venv
# was tested with. Run it here, where PyPI is reachable; benchmarks/gpu.sh installs .whl/ when it
# is there, so the device tool's call is `benchmarks/gpu.sh PART` with carry [".whl"].
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
)
rm -rf .whl && mkdir -p .whl
for name in "${names[@]}"; do
  version=$($PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  platforms=()
  for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
done
du -sh .whl
