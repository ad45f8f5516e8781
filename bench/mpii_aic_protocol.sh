#!/usr/bin/env bash
# The MPII + AI Challenger protocol (reference §1.2, §1.9, §9.4) end to end on synthetic native-format data, sized for
# a CPU: `sshpe synth --format mpii|aic` -> `sshpe shard` (MPII labeled + val with gt_valid.mat, AIC unlabeled with
# labels dropped) -> the shipped PoseDual + JC recipe (24-channel union head) with small overrides -> the PCKh table.
# Usage: bench/mpii_aic_protocol.sh [WORK_DIR]   (env: STEPS=300, BATCH=8, SIZE=64, ARCH=hrnet_small,
# IMAGES=400 synthetic images per dataset, SSHPE=sshpe)
# One torch thread per process unless OMP_NUM_THREADS says otherwise: on the shared 2-core box a 2-thread run stalled
# for minutes behind other jobs (threads waiting for each other), a 1-thread run did not.
# docs/benchmarks.md ("MPII + AIC protocol on synthetic native-format data") has the measured table.
set -euo pipefail
WORK=${1:-/tmp/sshpe-mpii-aic}
STEPS=${STEPS:-300}
IMAGES=${IMAGES:-400}
BATCH=${BATCH:-8}
SIZE=${SIZE:-64}
ARCH=${ARCH:-hrnet_small}
SSHPE=${SSHPE:-sshpe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RECIPE="$(cd "$(dirname "$0")/.." && pwd)/recipes/mpii-aic_hrnetw32-256x256_posedual-jc.yaml"
EVERY=$((STEPS / 3))

stage() { echo "== $1 ($(date -u +%H:%M:%S) UTC)"; }
if [ -e "$WORK" ]; then echo "$WORK exists; give a new WORK_DIR (or remove it)" >&2; exit 2; fi
mkdir -p "$WORK"
stage "synthetic MPII (HRNet annot/ layout) and AI Challenger, different seeds so the unlabeled persons are new"
$SSHPE synth "$WORK/mpii" --format mpii --train "$IMAGES" --val $((IMAGES / 4)) --seed 0 --workers 1
$SSHPE synth "$WORK/aic" --format aic --train "$IMAGES" --val 0 --seed 1 --workers 1
stage "shards: MPII train = labeled, AIC train = unlabeled, MPII valid = val (PCKh ground truth from gt_valid.mat)"
$SSHPE shard "$WORK/mpii" "$WORK/shards" --input-size "${SIZE}x${SIZE}" --unlabeled-source "$WORK/aic" --workers 1
stage "train $STEPS steps (random init, ${SIZE}x${SIZE}, batch $BATCH labeled + $BATCH unlabeled, $ARCH x 2 networks)"
start=$(date +%s)
$SSHPE train "$RECIPE" --out "$WORK/run" --no-resume \
  --set "data.shards=$WORK/shards" --set "data.input_size=[$SIZE,$SIZE]" --set data.sigma=2.0 \
  --set data.num_workers=1 --set "model.arch=$ARCH" --set model.pretrained=false \
  --set "train.batch_size=$BATCH" --set "train.duration=$STEPS" --set train.log_every=25 \
  --set "train.ckpt_every=$EVERY" --set "train.eval_every=$EVERY" --set train.progress=false
echo "training wall: $(($(date +%s) - start)) s"
stage "evaluate the exported model again from the run folder alone"
$SSHPE eval "$WORK/run"
