#!/usr/bin/env bash
# GPU check: precision table (scripts/gpu_check.py), then the real CLI on CUDA —
# pretrain (amp=auto → bf16), finetune from it with fp16 + GradScaler, evaluate.
# Usage: bash scripts/gpu_check.sh [OUTDIR]   (MLflow off: the device may not have it installed)
set -euo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CXRSSL_CACHE="$OUT/cache"
python3 scripts/gpu_check.py --models resnet18 densenet121 --size 224 --batch 64 | tee "$OUT/precision.txt"
COMMON="data.image_size=224 data.num_workers=8 data.batch_size=64 mlflow.enabled=false trainer.device=cuda trainer.progress=false"
python3 -m cxrssl pretrain backbone=resnet18 $COMMON trainer.max_epochs=3 hydra.run.dir="$OUT/pretrain" | tail -8 | tee "$OUT/pretrain.txt"
python3 -m cxrssl finetune backbone=resnet18 $COMMON trainer.amp=fp16 trainer.max_epochs=3 \
  pretrained="$OUT/pretrain/checkpoints/best.pt" hydra.run.dir="$OUT/finetune" | tail -8 | tee "$OUT/finetune.txt"
python3 -m cxrssl evaluate checkpoint="$OUT/finetune/checkpoints/best.pt" $COMMON evaluate.n_boot=500 \
  hydra.run.dir="$OUT/evaluate" | tail -22 | tee "$OUT/evaluate.txt"
