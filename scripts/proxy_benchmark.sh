#!/usr/bin/env bash
# The proxy benchmark with real texts (CPU): a subset of a user's PHOENIX-2014-T or CSL-Daily
# annotation files (real sentences, glosses and frame counts; no video) rendered into per-frame
# features (python -m scl_slt.data.proxy), then, per seed, the component rows (end-to-end
# baseline, CL-SLT, SCL-SLT) and the other negative-selection strategies on the same reference
# run and budget, the stage-1 runs evaluated on test (retrieval coarse and fine-grained, SDR), the
# batch diagnostics of every strategy replayed against the seed's reference run, and the report
# (mean ± std, 95 % interval, paired bootstrap against CL-SLT / random).
#
#   scripts/proxy_benchmark.sh OUT_DIR phoenix14t|csl_daily
#
# Settings (environment variables; defaults in brackets), besides scripts/compare_strategies.sh's
# (SEEDS ["0 1 2"], EXTRA, DEVICE, ...):
#   LABELS [../shared/data/<dataset> beside the repository]  folder of labels.{train,dev,test}
#   MAX_TRAIN [1000]  MAX_DEV [100]  MAX_TEST [200]  FRAME_STRIDE [3]  DATA_SEED [0]
#   STRATEGIES ["trajectory random text_semantic san"]  EXPERIMENT [tiny]
#   REFERENCE_EPOCHS = CONTRASTIVE_EPOCHS [8] (the reference run is then CL-SLT's stage 1)
#   TRANSLATE_EPOCHS [8]  INTERVAL [2]  EVAL_EVERY [2]
# Outputs: OUT_DIR/data (the proxy dataset), OUT_DIR/seed<S>/ (pipelines), OUT_DIR/baseline/,
# OUT_DIR/diagnostics/seed<S>.json (replayed batch diagnostics), OUT_DIR/report/.
# Everything resumes: run again with the same OUT_DIR and finished steps are skipped.
set -euo pipefail

if [[ $# -ne 2 || ! $2 =~ ^(phoenix14t|csl_daily)$ ]]; then
  echo "usage: $0 OUT_DIR phoenix14t|csl_daily" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
DATASET=$2
PYTHON=${PYTHON:-python}
LABELS=${LABELS:-$HERE/../../shared/data/$DATASET}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${CONTRASTIVE_EPOCHS:-8}
export PYTHON SEEDS
export EXPERIMENT=${EXPERIMENT:-tiny}
export STRATEGIES=${STRATEGIES:-"trajectory random text_semantic san"}
export REFERENCE_EPOCHS=${REFERENCE_EPOCHS:-$EPOCHS} CONTRASTIVE_EPOCHS=$EPOCHS
export TRANSLATE_EPOCHS=${TRANSLATE_EPOCHS:-8} INTERVAL=${INTERVAL:-2} EVAL_EVERY=${EVAL_EVERY:-2}
export BASELINE=1
DATA=("data=${DATASET}_proxy" "data.root=$OUT/data")
export EXTRA="${DATA[*]} ${EXTRA:-}"
START=$SECONDS

echo "== proxy data from $LABELS"
"$PYTHON" -m scl_slt.data.proxy --labels "$LABELS" --out "$OUT/data" --seed "${DATA_SEED:-0}" \
  --max-train "${MAX_TRAIN:-1000}" --max-dev "${MAX_DEV:-100}" --max-test "${MAX_TEST:-200}" \
  --frame-stride "${FRAME_STRIDE:-3}"

# The report at the end of compare_strategies.sh is written again below, with the diagnostics.
bash "$HERE/compare_strategies.sh" "$OUT"

echo "== batch diagnostics, every strategy replayed against each seed's reference run"
mkdir -p "$OUT/diagnostics"
# online_trajectory and self_trajectory build their batches from the training run itself: their
# diagnostics are the batch_diagnostics records of their stage-1 runs' metrics.jsonl.
REPLAYED=()
for strategy in $STRATEGIES; do
  [[ $strategy == online_trajectory || $strategy == self_trajectory ]] || REPLAYED+=("$strategy")
done
for seed in $SEEDS; do
  ref=$OUT/seed$seed/1-reference
  [[ -f "$OUT/diagnostics/seed$seed.json" ]] && continue
  "$PYTHON" -m scl_slt.diagnose "--strategies=$(IFS=,; echo "${REPLAYED[*]}")" \
    "--out=$OUT/diagnostics/seed$seed.json" "--work-dir=$OUT/diagnostics/work-seed$seed" \
    "experiment=$EXPERIMENT" "${DATA[@]}" "seed=$seed" "stage.epochs=$EPOCHS" \
    "selection.pair_scores=$ref/pair_scores.npy" "selection.diagnostics_reference=$ref" \
    "selection.checkpoint=$ref" "selection.snapshot=$ref/snapshots" device=cpu \
    > "$OUT/diagnostics/seed$seed.txt"
done
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
