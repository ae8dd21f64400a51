#!/usr/bin/env bash
# Seventeenth session: v8 fine-tuned at 128 px on lossless (PNG) packs (docs/cross-source.md,
# "v8 fine-tuned at 128 px"): the sixteenth session's lossless run with these settings.
# ~20 min on 2 CPU cores alone.
set -euo pipefail
SIZE=128 TAG=ft128 OUT=docs/results/ft128_2026-12-08 CFG=training/configs/gen128_ft_from_v8.json \
    bash docs/results/ft112_2026-12-08/run_lossless.sh
