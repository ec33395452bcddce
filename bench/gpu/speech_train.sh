#!/usr/bin/env bash
# Fine-tune the bundled speech model on a lent GPU machine, synthesising fresh clips on its CPU
# cores while it trains (plugins/speech/README.md, "Training on a GPU"). Run from the repo root
# on that machine; the machine has PyTorch but not espeak-ng nor our pure-Python needs, so
# bench/gpu/prepare_carry.sh first puts them in .gpu/ here, and the device tool carries .gpu.
#   bench/gpu/speech_train.sh [--set KEY=VALUE ...]   (later --set win)
# Writes the best weights (by validation CER) and the log to $OUT (default ./gpu-out).
set -euo pipefail
repo=$PWD
carry=${MMSERVE_GPU_CARRY:-$repo/.gpu}
out=${OUT:-$repo/gpu-out}
mkdir -p "$out/speech" /tmp/mmserve-pkg/mmserve
export PATH=$carry/espeak/bin:$PATH
export LD_LIBRARY_PATH=$carry/espeak/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ESPEAK_DATA_PATH=$carry/espeak
# mmserve's package layout (pyproject's package-dir) without installing it.
for part in server plugins registry; do ln -sfn "$repo/$part" "/tmp/mmserve-pkg/mmserve/$part"; done
export PYTHONPATH=/tmp/mmserve-pkg:$carry/site PYTHONUNBUFFERED=1
python3 -c "import PIL" 2>/dev/null || PYTHONPATH=$PYTHONPATH:$carry/fallback  # see prepare_carry.sh
export MMSERVE_DATA_DIR=${MMSERVE_DATA_DIR:-/tmp/mmserve-data}
python3 - <<'PY'
import torch, subprocess
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
print(subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip())
PY
cores=$(nproc)
# The defaults are stage 16 of the bundled weights (plugins/speech/TRAINING_LOG.md): the grown
# listener on the served features, from the bundled weights.
python3 bench/gpu/speech_train.py --output-dir "$out/speech" --epochs 300 --batch-size 256 --lr 8e-4 \
    --set init_from="$repo/plugins/speech/weights" --set extra_train_clips=200000 \
    --set extra_clip_processes=$((cores > 3 ? cores - 2 : 1)) --set data_workers="$cores" \
    --set ctc_pretrain_steps=0 --set warmup_steps=150 --set time_budget_minutes=8.2 --set freq_masks=0 \
    --set time_masks=0 --set dropout=0 --set max_length=120 --set eval_every=200 --set curriculum_epochs=0 \
    --set listener_blocks_4x=1 --set listener_blocks_8x=1 --set listener_block_hidden=128 \
    --set stats_margin_s=0.2 --set edge_pad_seconds=0.5 --set edge_pad_prob=0.5 \
    --set progress=false --set num_threads=2 "$@" 2>&1 | tee "$out/train.log"
find "$MMSERVE_DATA_DIR" -path '*train-extra/*/index.json' | wc -l | xargs echo "extra shards written:"
