#!/usr/bin/env bash
# The paper-faithful setting at full size, in one call to a lent GPU: whole Kaggle fields at
# 224 px, Adam lr 0.01 constant, batch 147, 30 epochs (training/configs/kaggle4_ddrnet_field224.json),
# for DDRNet with BatchNorm and with GroupNorm (the paper's), ResNet-18/50/101 (paper Table 4;
# from scratch: no pretrained weights can be fetched) and the block ablation (paper Table 6).
# The jobs share the GPU side by side; each is scored on TEST once, at its last epoch (no
# selection), and the BatchNorm ones also after re-estimating their statistics on 20 % of the
# clean TRAIN fields (training.recalibrate), as on the CPU.
#   usage: bash training/gpu_paper224.sh RUNS [PACKS=packs_device] [LIMIT_S=420] [EPOCHS=30]
#   e.g. on the device: bash training/gpu_paper224.sh /tmp/p224 packs_device 420 30
# PACKS holds kaggle_field224_{train,test}.npz; the CPU-built packs (169 MiB of images) exceed what a call
# carries, so carry WebP copies (42.5 MiB; with the 9.3 MB tree, under the 64 MiB limit;
# docs/results/packs_device.log):
#   for s in train test; do python -m training.packs reencode packs/kaggle_field224_$s.npz \
#       packs_device/kaggle_field224_$s.npz; done
# Then: mkdir -p docs/results/paper224 && tar xzf paper224.tgz -C docs/results/paper224, and
# python -m benchmarks.accuracy prints Table 6/4
# (train_time_s there is of jobs sharing one GPU, not comparable to the paper's times).
# A CPU smoke run: EXTRA="--limit 64 --device cpu --threads 1" bash training/gpu_paper224.sh \
#   /tmp/p224 packs 300 1
set -uo pipefail
RUNS=${1:?usage: gpu_paper224.sh RUNS [PACKS] [LIMIT_S] [EPOCHS]}
PACKS=${2:-packs_device}
LIMIT=${3:-420}
EPOCHS=${4:-30}
CFG=training/configs/kaggle4_ddrnet_field224.json
TESTS=kaggle_field224_test
RECAL="--packs-train kaggle_field224_train:0.2 --batch-size 256"
# shellcheck source=training/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"

B='"norm": "batch"'
job ddrnet_bn $CFG "$EPOCHS" "$RECAL" &
job ddrnet_gn $CFG "$EPOCHS" "" --set 'ddrnet={"norm": "group"}' &
job resnet18 $CFG "$EPOCHS" "$RECAL" --set 'arch="resnet18"' &
job resnet50 $CFG "$EPOCHS" "$RECAL" --set 'arch="resnet50"' &
job resnet101 $CFG "$EPOCHS" "$RECAL" --set 'arch="resnet101"' &
# Ablation (paper Table 6): blocks switched off, everything else as ddrnet_bn.
job abl_conv $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_drdb\": false, \"use_glfeb\": false, \"use_csab\": false}" &
job abl_drdb $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_glfeb\": false, \"use_csab\": false}" &
job abl_glfeb $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_drdb\": false, \"use_csab\": false}" &
job abl_glfeb_csab $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_drdb\": false}" &
job abl_drdb_csab $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_glfeb\": false}" &
job abl_drdb_glfeb $CFG "$EPOCHS" "$RECAL" --set "ddrnet={$B, \"use_csab\": false}" &
wait
echo "all done" >> "$RUNS/status.txt"
pack_reports paper224 --exclude='*.pt' --exclude='*.png'
