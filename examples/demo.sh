#!/usr/bin/env bash
# `make demo`: the main job on the bundled example data with the bundled models (offline, CPU).
# Rerunning it resumes the same run directory; `rm -rf demo-run` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/equal extract \
  --corpus examples/corpus.jsonl \
  --target examples/target.jsonl \
  --out demo-run \
  --budget-docs 12 --clusters 6 --clusters-per-round 3 --docs-per-cluster 1 --max-tokens 128 --chunk-tokens 256 \
  "$@"
.venv/bin/equal export demo-run --format sharegpt --out demo-run/dataset.sharegpt.jsonl
echo
echo "dataset (messages form, with provenance): demo-run/qa.jsonl"
echo "dataset (ShareGPT form):                  demo-run/dataset.sharegpt.jsonl"
echo "report:                                   demo-run/report.html"
echo "cost ledger:                              demo-run/ledger.json"
