#!/usr/bin/env bash
# The GPU figures on one GPU, each part one command meant to end well inside the device tool's 10
# minutes on an H100; every table is printed (each row as soon as it is measured) and appended to
# benchmarks/RESULTS.md with device, date, versions and command.
#   benchmarks/gpu.sh quick|train|decode|train-compile|decode-batch8|prepare|small|all [options for that part]
# `quick` is the one to run first: the most wanted figures in at most 8 minutes (RESULTS.md says how
# each part was sized). QUICK_SIZES=small runs it at CPU sizes, to check it end to end without a GPU.
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
data=() stereo=()
[ -f .gpu/melodies-1024/card.json ] && data=(--data .gpu/melodies-1024)
[ -f .gpu/melodies-1024-stereo/card.json ] && stereo=(--data .gpu/melodies-1024-stereo)
part=${1:-all}
shift || true
# the research log's setting: Dia-1.6B's shape, batch 20 x 10 s clips, bf16
dia=(benchmarks/train_speed.py --presets dia-1.6b --batch-size 20 --frames 860 --workers 4 --steps 20 --warmup 8 "${data[@]}")
decode=(benchmarks/decode_speed.py --presets dia-1.6b --device cuda --dtype bf16 --frames 430)
quick() {
  # (a) Dia-1.6B's shape at the research log's batch: checkpointing, LoRA, 8-bit AdamW; (b) generation at
  # batch 1 with CFG 3, every loop and transformers' generate; (c) the research log's own model and
  # batch, stereo from scratch. Each part has a time limit, so one that stalls leaves the rest their time.
  local big=dia-1.6b batch=20 frames=860 steps=8 warmup=3 decode_frames=258 log_preset=research-log
  local log_batch=4 log_frames=600 limit_a=240 limit_b=180 limit_c=60 results=() melodies=()
  if [ "${QUICK_SIZES:-}" = small ]; then  # a check of the path, not figures: nothing is added to RESULTS.md
    results=(--results -) melodies=(--melodies 8)
    big=tiny batch=2 frames=64 steps=3 warmup=1 decode_frames=16 log_preset=tiny log_batch=2 log_frames=64
    limit_a=900 limit_b=600 limit_c=600
  fi
  timeout "$limit_a" $PY benchmarks/train_speed.py --presets "$big" --batch-size "$batch" --frames "$frames" \
    --workers 4 --steps "$steps" --warmup "$warmup" "${data[@]}" \
    --variants checkpointing lora+checkpointing adamw8bit+checkpointing "${results[@]}" "${melodies[@]}" || echo "quick (a): stopped ($?)"
  timeout "$limit_b" $PY benchmarks/decode_speed.py --presets "$big" --device "$device" --dtype "$dtype" \
    --frames "$decode_frames" --batches 1 --patterns dia musicgen --repeats 1 "${results[@]}" || echo "quick (b): stopped ($?)"
  timeout "$limit_c" $PY benchmarks/train_speed.py --config research-log-2025-11-25 --presets "$log_preset" \
    --batch-size "$log_batch" --grad-accum 4 --frames "$log_frames" --channels stereo --workers 4 \
    --steps "$steps" --warmup "$warmup" --variants plain "${stereo[@]}" "${results[@]}" "${melodies[@]}" || echo "quick (c): stopped ($?)"
}
device=cuda dtype=bf16
[ "${QUICK_SIZES:-}" = small ] && device=cpu dtype=fp32
case "$part" in
  quick) quick ;;
  train) $PY "${dia[@]}" --variants checkpointing plain "$@" ;;  # plain may not fit in 80 GB: it goes second
  train-compile) $PY "${dia[@]}" --variants compile+checkpointing compile "$@" ;;
  decode) $PY "${decode[@]}" --batches 1 "$@" ;;
  decode-batch8) $PY "${decode[@]}" --batches 8 "$@" ;;
  prepare) $PY benchmarks/prepare_speed.py --melodies 60 "$@" ;;
  small) $PY benchmarks/train_speed.py --presets tiny small --batch-size 20 --frames 860 --workers 4 "${data[@]}" "$@" ;;
  all) for p in train decode train-compile decode-batch8 prepare small; do "$0" "$p"; done ;;
  *) echo "usage: $0 quick|train|decode|train-compile|decode-batch8|prepare|small|all [options]" >&2; exit 2 ;;
esac
