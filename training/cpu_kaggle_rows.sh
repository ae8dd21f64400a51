#!/usr/bin/env bash
# Fifth session of 2026-12-06 (pre-registered in docs/benchmarks.md, Table 6): on the 2-core
# CPU, one run after another:
#   1. PBC-only pretraining (pbc8_only_ddrnet), scored on PBC test;
#   2. the Table 6 full-model recipe fine-tuned from it (kaggle4_ddrnet_pbcinit), scored on
#      Kaggle TEST single pass (training.evaluate) and with 8-view TTA (benchmarks.cross_source);
#   3. Table 6's six ablation rows on the re-cut packs; 4. Table 4's ResNet-18.
# Usage: bash training/cpu_kaggle_rows.sh [STEP...]   (default: every step; packs30 holds the
# PBC packs, packs_k30 the re-cut Kaggle packs; see docs/results/*_scalefix/README.md)
set -euo pipefail
PY=${PY:-.venv/bin/python}
T=(--device cpu --threads 2)
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(pretrain finetune ablation resnet18)
train_eval() {  # NAME PACKS TEST CONFIG [train args...]
  local name=$1 packs=$2 test=$3 config=$4; shift 4
  [ -f "runs/$name/summary.json" ] || $PY -m training.train --config "$config" --packs "$packs" \
      --out "runs/$name" "${T[@]}" "$@"
  $PY -m training.evaluate --run "runs/$name" --packs "$packs" --test "$test" --device cpu
}
B='"norm": "batch"'
for step in "${steps[@]}"; do
  case $step in
    pretrain) train_eval pbc8_only_ddrnet packs30 pbc_test training/configs/pbc8_only_ddrnet.json ;;
    finetune)
      train_eval kaggle4_ddrnet_pbcinit packs_k30 kaggle_test training/configs/kaggle4_ddrnet_pbcinit.json
      $PY -m training.export --run runs/kaggle4_ddrnet_pbcinit \
          --out runs/kaggle4_ddrnet_pbcinit/kaggle4_ddrnet_pbcinit.safetensors \
          --config training/configs/kaggle4_ddrnet_pbcinit.json
      $PY -m benchmarks.cross_source --weights runs/kaggle4_ddrnet_pbcinit/kaggle4_ddrnet_pbcinit.safetensors \
          --packs packs_k30 --sources kaggle_test --modes kaggle_test=plain,tta \
          --out runs/kaggle4_ddrnet_pbcinit ;;
    ablation)
      train_eval abl_conv_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_drdb\": false, \"use_glfeb\": false, \"use_csab\": false}"
      train_eval abl_drdb_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_glfeb\": false, \"use_csab\": false}"
      train_eval abl_drdb_csab_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_glfeb\": false}"
      train_eval abl_glfeb_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_drdb\": false, \"use_csab\": false}"
      train_eval abl_glfeb_csab_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_drdb\": false}"
      train_eval abl_drdb_glfeb_scalefix packs_k30 kaggle_test training/configs/kaggle4_ddrnet.json \
          --set "ddrnet={$B, \"use_csab\": false}" ;;
    resnet18) train_eval kaggle4_resnet18_scalefix packs_k30 kaggle_test training/configs/kaggle4_resnet18.json ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
