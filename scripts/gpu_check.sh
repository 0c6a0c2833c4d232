#!/usr/bin/env bash
# GPU check: precision table (scripts/gpu_check.py), then the real CLI on CUDA —
# pretrain (amp=auto → bf16), resume after SIGKILL and SIGTERM (exit 143) on CUDA, finetune from
# the first pretrain with fp16 + GradScaler, evaluate.
# Usage: bash scripts/gpu_check.sh [OUTDIR]   (MLflow off: the device may not have it installed)
#   PRECISION=0 skips the precision table; EXTRA="data.… …" adds overrides to every run (e.g. to reuse
#   a data set another step already generated); DEVICE=cpu SIZE=32 EXTRA="backbone=tiny …" is a CPU smoke test
#   of the script itself.
set -euo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CXRSSL_CACHE="$OUT/cache"
if [ "${PRECISION:-1}" != 0 ]; then
  python3 scripts/gpu_check.py --models resnet18 densenet121 --size 224 --batch 64 | tee "$OUT/precision.txt"
fi
COMMON="data.image_size=${SIZE:-224} data.num_workers=8 data.batch_size=64 mlflow.enabled=false trainer.device=${DEVICE:-cuda} trainer.progress=false ${EXTRA:-}"
python3 -m cxrssl pretrain backbone=${BACKBONE:-resnet18} $COMMON trainer.max_epochs=3 hydra.run.dir="$OUT/pretrain" | tail -8 | tee "$OUT/pretrain.txt"
# Resume on CUDA (issue 8): 1 epoch -> last.pt; then a 3-epoch resume with a recovery checkpoint every
# 10 steps, SIGKILLed while a checkpoint write is paused (test hook); resume=true again (checkpoint
# loaded onto the CPU first, RNG states stay CPU tensors), SIGTERMed during the next write: exit 143;
# a last resume=true finishes the 3 epochs.
R="$OUT/resume"; RCOMMON="$COMMON trainer.max_epochs=3 trainer.checkpoint_every_n_steps=10 hydra.run.dir=$R"
wait_line() { for _ in $(seq 1200); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.25; done; return 1; }
python3 -m cxrssl pretrain backbone=${BACKBONE:-resnet18} $COMMON trainer.max_epochs=1 hydra.run.dir="$R" | tail -3 | tee "$OUT/resume.txt"
CXRSSL_TEST_CHECKPOINT_PAUSE_S=60 python3 -m cxrssl pretrain backbone=${BACKBONE:-resnet18} $RCOMMON resume=true > "$OUT/resume_kill.log" 2>&1 & PID=$!
wait_line "checkpoint pause:" "$OUT/resume_kill.log"; kill -KILL $PID; wait $PID || true
echo "SIGKILL mid-write; files: $(ls "$R/checkpoints" | tr '\n' ' ')" | tee -a "$OUT/resume.txt"
CXRSSL_TEST_CHECKPOINT_PAUSE_S=5 python3 -m cxrssl pretrain backbone=${BACKBONE:-resnet18} $RCOMMON resume=true > "$OUT/resume_term.log" 2>&1 & PID=$!
wait_line "checkpoint pause:" "$OUT/resume_term.log"; kill -TERM $PID; set +e; wait $PID; RC=$?; set -e
grep -E "resumed from|preempted" "$OUT/resume_term.log" | tee -a "$OUT/resume.txt"
echo "SIGTERM exit status: $RC (expected 143)" | tee -a "$OUT/resume.txt"; [ "$RC" -eq 143 ]
python3 -m cxrssl pretrain backbone=${BACKBONE:-resnet18} $RCOMMON resume=true 2>&1 | grep -E "resumed from|^epoch|best:" | tee -a "$OUT/resume.txt"
python3 -m cxrssl finetune backbone=${BACKBONE:-resnet18} $COMMON trainer.amp=fp16 trainer.max_epochs=3 \
  pretrained="$OUT/pretrain/checkpoints/best.pt" hydra.run.dir="$OUT/finetune" | tail -8 | tee "$OUT/finetune.txt"
python3 -m cxrssl evaluate checkpoint="$OUT/finetune/checkpoints/best.pt" $COMMON evaluate.n_boot=500 \
  hydra.run.dir="$OUT/evaluate" | tail -22 | tee "$OUT/evaluate.txt"
