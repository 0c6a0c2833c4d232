#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in ONE call of a lent machine (15 minutes of device
# time in all), each step time-boxed so that one failure does not lose the others:
#   1. `cxrssl pretrain` vs the model alone, CPU augmentation in the loader   (issue 11, table)
#   2. the same with data.gpu_augment=true (kornia on the device)              (issue 11, the lever)
#   3. resume on CUDA after SIGKILL / SIGTERM mid-write, fp16 finetune, evaluate (issue 8 / 11)
#   4. images/s per self-supervised method next to the supervised step        (issue 10)
#   5. the phantom's supervised-CNN calibration row: resnet18, 128 px, 100 %   (issue 9)
# Usage: bash scripts/gpu_session.sh OUTDIR [a|b|all]   (a: steps 1-2 and the loader alone; b: 3-5;
#   MLflow off: the device machine does not have it)
# Everything is appended to OUTDIR/session.log (the device returns at most 8 files).
set -u
OUT=${1:-gpu_session_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 CXRSSL_CACHE=/tmp/cxrssl_cache
step() {  # step NAME SECONDS COMMAND...: run, keep the whole log, print its tail
  local name=$1 limit=$2; shift 2
  echo "=== $name start $(date +%T)" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "/tmp/step_$name.log" 2>&1
  local rc=$?
  grep -v -E "it/s\]|img/s\]" "/tmp/step_$name.log" | tail -n "${TAIL:-40}" >> "$LOG"
  echo "=== $name rc=$rc end $(date +%T)" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$LOG"
# Small phantoms at 128 px (upscaled to 224): on 2026-11-27 drawing 12.5k phantoms at 256 px on the
# device outlasted every step's time box; 800 + 800 patients at 128 px (3.3k training images) fit.
DATA="mlflow.enabled=false data.synthetic.native_size=128 data.synthetic.n_unlabelled_patients=800 data.synthetic.workers=16"
PART=${2:-all}
if [ "$PART" = a ] || [ "$PART" = all ]; then
  step pipeline_cpu_augment 150 python3 scripts/bench_gpu_pipeline.py --models resnet18:256:cl densenet121:128 \
    --patients 800 --epochs 3 --workers 15 --out /tmp/bench_cpu --extra $DATA
  step pipeline_gpu_augment 100 python3 scripts/bench_gpu_pipeline.py --models resnet18:256:cl densenet121:128 \
    --patients 800 --epochs 3 --workers 15 --out /tmp/bench_gpu --extra $DATA data.gpu_augment=true
  step loader_only 40 python3 scripts/bench_gpu_pipeline.py --loader-only --models resnet18:256 --patients 800 --workers 15 \
    --out /tmp/bench_loader --extra $DATA
  step cuda_tests 40 python3 -m pytest -q -x -p no:cacheprovider tests/data/test_gpu_augment.py -k "cuda or device"
fi
if [ "$PART" = b ] || [ "$PART" = all ]; then
  TAIL=60 step cuda_resume 110 env PRECISION=0 EXTRA="$DATA data.synthetic.n_patients=800" bash scripts/gpu_check.sh /tmp/gpu_check
  cat /tmp/gpu_check/resume.txt /tmp/gpu_check/finetune.txt /tmp/gpu_check/evaluate.txt >> "$LOG" 2>/dev/null
  step ssl_methods 50 python3 scripts/bench_ssl.py --device cuda --size 224 --cnn resnet18 --vit vit_small \
    --batch 64 --steps 10 --warmup 3 --amp bf16
  step phantom_cnn 75 python3 scripts/bench_phantom.py --cnn --out /tmp/phantom backbone=resnet18 \
    data.image_size=128 data.num_workers=8 data.synthetic.workers=16 trainer.device=cuda trainer.max_epochs=20 \
    optimizer.lr=1e-3 mlflow.enabled=false
fi
echo "=== done $(date +%T)" | tee -a "$LOG"
