#!/usr/bin/env bash
# Every GPU measurement issue 11 still needs, in ONE call of a lent machine (15 minutes of device
# time in all, start-up included), each step time-boxed so that one failure does not lose the others:
#   1. pipeline: `cxrssl pretrain` vs the model alone at realistic epoch sizes (40k training images
#      per epoch, hard links to a small phantom), data.gpu_augment=true and CPU augmentation, plus a
#      profiled run per model (GPU busy share, idle gaps by cause)           -> scripts/bench_gpu_pipeline.py
#   2. CUDA-only tests: GPU augmentation = CPU result with no host sync; the side-stream batch copy;
#      worker release and clean exit with pinned memory
#   3. resume on CUDA after SIGKILL / SIGTERM mid-write, fp16 finetune, evaluate -> scripts/gpu_check.sh
# Usage: bash scripts/gpu_session.sh OUTDIR [pipeline|checks|all]   (MLflow off: the device lacks it)
# OUTDIR gets session.log (tails of every step), bench.log and the profile summaries (the device
# returns at most 8 files).
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
  grep -v -E "it/s\]|img/s\]|^USDT|gpuGetDeviceCount" "/tmp/step_$name.log" | tail -n "${TAIL:-40}" >> "$LOG"
  echo "=== $name rc=$rc end $(date +%T)" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
nproc | tee -a "$LOG"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$LOG"
PART=${2:-all}
if [ "$PART" = pipeline ] || [ "$PART" = all ]; then
  TAIL=30 step pipeline "${PIPELINE_S:-330}" python3 scripts/bench_gpu_pipeline.py \
    --models resnet18:256:cl densenet121:128:l150 --epoch-images 40000 --patients 300 --workers 15 \
    --epochs 3 --profile 30 --cpu-augment-limit 60 --out /tmp/bench
  grep -v -E "it/s\]|img/s\]|^USDT|gpuGetDeviceCount|^(checkpoints|next|outputs|summary|mlflow run|final val|best):" \
    /tmp/step_pipeline.log > "$OUT/bench.log"
  for p in /tmp/bench/*_profile/profile/summary.json; do
    [ -f "$p" ] && cp "$p" "$OUT/$(basename "$(dirname "$(dirname "$p")")").json"
  done
fi
if [ "$PART" = checks ] || [ "$PART" = all ]; then
  step cuda_tests 60 python3 -m pytest -q -x -p no:cacheprovider tests/data/test_gpu_augment.py \
    tests/engine/test_profiling.py -k "cuda or device or copier"
  # with CUDA present, loaders pin memory (a pin thread per loader) that the worker release must stop too
  step worker_release 120 python3 -m pytest -q -x -p no:cacheprovider tests/engine/test_worker_release.py \
    tests/test_cli_exit.py tests/commands/test_train_split_inference.py
  SMALL="data.synthetic.native_size=128 data.synthetic.n_patients=200 data.synthetic.n_unlabelled_patients=200 data.synthetic.workers=16"
  TAIL=60 step cuda_resume 170 env PRECISION=0 EXTRA="$SMALL" bash scripts/gpu_check.sh /tmp/gpu_check
  cat /tmp/gpu_check/resume.txt /tmp/gpu_check/finetune.txt /tmp/gpu_check/evaluate.txt >> "$LOG" 2>/dev/null
fi
echo "=== done $(date +%T)" | tee -a "$LOG"
