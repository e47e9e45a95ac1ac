#!/usr/bin/env bash
# Issue #13's GPU figures on one GPU, each part one command of under 10 minutes on an H100; every
# table is printed and appended to benchmarks/RESULTS.md with device, date, versions and command.
#   benchmarks/gpu.sh train|train-compile|decode|prepare|small|all [extra options for that part]
# diamusic runs from src/; its dependencies must be importable by $PYTHON (default python3). On a
# machine without them (the device tool's GPU image), fill .whl/ here with benchmarks/gpu_wheels.sh
# and carry it: they are installed into a folder of their own, ahead of the image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
site=
if compgen -G ".whl/*.whl" >/dev/null; then
  site=${WHEEL_SITE:-/tmp/diamusic-site}
  [ -d "$site" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
fi
# the device tool returns only what is under $OUT, so the tables travel back in a copy of RESULTS.md
trap '[ -z "${OUT:-}" ] || cp benchmarks/RESULTS.md "$OUT/"' EXIT
export PYTHONPATH=src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
part=${1:-all}
shift || true
# the research log's setting: Dia-1.6B's shape, batch 20 x 10 s clips, bf16
dia=(benchmarks/train_speed.py --presets dia-1.6b --batch-size 20 --frames 860 --workers 4 --steps 20 --warmup 8)
case "$part" in
  train) $PY "${dia[@]}" --variants plain checkpointing "$@" ;;
  train-compile) $PY "${dia[@]}" --variants compile compile+checkpointing "$@" ;;
  decode) $PY benchmarks/decode_speed.py --presets dia-1.6b --device cuda --dtype bf16 --frames 430 "$@" ;;
  prepare) $PY benchmarks/prepare_speed.py --melodies 60 "$@" ;;
  small) $PY benchmarks/train_speed.py --presets tiny small --batch-size 20 --frames 860 --workers 4 "$@" ;;
  all) for p in train train-compile decode prepare small; do "$0" "$p"; done ;;
  *) echo "usage: $0 train|train-compile|decode|prepare|small|all [options]" >&2; exit 2 ;;
esac
