#!/usr/bin/env bash
# Issue #13's GPU figures on one GPU, each part one command meant to end well inside the device
# tool's 10 minutes on an H100; every table is printed (each row as soon as it is measured) and
# appended to benchmarks/RESULTS.md with device, date, versions and command.
#   benchmarks/gpu.sh train|decode|train-compile|decode-batch8|prepare|small|all [options for that part]
# diamusic runs from src/; its dependencies must be importable by $PYTHON (default python3). On the
# device tool's GPU image, which lacks them, run benchmarks/gpu_carry.sh here first and carry .gpu:
# its wheels are installed into a folder of their own, ahead of the image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
site=
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  site=${WHEEL_SITE:-/tmp/diamusic-site}
  [ -d "$site" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
fi
# the device tool returns only what is under $OUT, so the tables travel back in a copy of RESULTS.md
trap '[ -z "${OUT:-}" ] || cp benchmarks/RESULTS.md "$OUT/"' EXIT
export PYTHONPATH=src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data=()
[ -f .gpu/melodies-1024/card.json ] && data=(--data .gpu/melodies-1024)
part=${1:-all}
shift || true
# the research log's setting: Dia-1.6B's shape, batch 20 x 10 s clips, bf16
dia=(benchmarks/train_speed.py --presets dia-1.6b --batch-size 20 --frames 860 --workers 4 --steps 20 --warmup 8 "${data[@]}")
decode=(benchmarks/decode_speed.py --presets dia-1.6b --device cuda --dtype bf16 --frames 430)
case "$part" in
  train) $PY "${dia[@]}" --variants checkpointing plain "$@" ;;  # plain may not fit in 80 GB: it goes second
  train-compile) $PY "${dia[@]}" --variants compile+checkpointing compile "$@" ;;
  decode) $PY "${decode[@]}" --batches 1 "$@" ;;
  decode-batch8) $PY "${decode[@]}" --batches 8 "$@" ;;
  prepare) $PY benchmarks/prepare_speed.py --melodies 60 "$@" ;;
  small) $PY benchmarks/train_speed.py --presets tiny small --batch-size 20 --frames 860 --workers 4 "${data[@]}" "$@" ;;
  all) for p in train decode train-compile decode-batch8 prepare small; do "$0" "$p"; done ;;
  *) echo "usage: $0 train|decode|train-compile|decode-batch8|prepare|small|all [options]" >&2; exit 2 ;;
esac
