#!/usr/bin/env bash
# Negative-selection strategies side by side on the synthetic sign language (CPU): the same
# reference run, seeds and budget for every stage-1 selection, each followed by the same
# translation stage; then the report's strategy table (test retrieval R@1, SDR and BLEU-4 of the
# stage-1 checkpoint, BLEU-4 after stage 2; mean ± std over seeds).
#
#   scripts/compare_strategies.sh OUT_DIR
#
# Per seed S, one `python -m scl_slt.pipeline strategies=[...]` under OUT_DIR/seed<S>/ runs:
#   1-reference                random contrastive stage with snapshots, scored -> pair_scores.npy
#   2-selective / 3-translate  trajectory (SCL, the paper's curriculum over pair_scores.npy)
#   2-random / 3-translate-random                  shuffled batches (CL)
#   2-text_semantic / 3-translate-text_semantic    TF-IDF similarity of the target sentences
#   2-visual_curriculum / ...                      curriculum over the reference snapshot's visual similarity
#   2-san / 3-translate-san                        SAN: per-anchor hard negatives, reference checkpoint's sign embeddings
#   2-online_trajectory / ...                      in-run EMA trajectories (no reference run)
#   2-self_trajectory / ...                        its own snapshots every INTERVAL epochs (no reference run)
# The stage-1 runs are then evaluated on test (Hydra multirun over the run dirs): translation
# metrics, retrieval R@K / median rank and SDR go into <run>/eval/best/test/metrics.json.
# Everything resumes: run again with the same OUT_DIR and finished steps are skipped.
#
# Settings (environment variables; defaults in brackets):
#   PYTHON [python]  SEEDS ["0 1 2"]  DEVICE [cpu]
#   EXPERIMENT [tiny_hard]  configs/experiment/<name>.yaml for every training run; tiny_hard is
#       the tiny model on harder synthetic data (the default data saturates retrieval at 100 %)
#   STRATEGIES ["trajectory random text_semantic visual_curriculum san online_trajectory"]
#   REFERENCE_EPOCHS [6]  INTERVAL [2]  CONTRASTIVE_EPOCHS [12]  TRANSLATE_EPOCHS [12]
#   EVAL_EVERY [4]  EXTRA [""] (more Hydra overrides for every training run)
#   SHARE_REFERENCE [true]  false: CL-SLT (random) trains its own stage 1 instead of reusing the
#       reference run, so each row's chain compute (pipeline.json _chains, the report) is its own
#   BASELINE [0]  1: also the end-to-end baseline (stage=translate from scratch, TRANSLATE_EPOCHS)
#       per seed in OUT_DIR/baseline/seed<S>, evaluated on test, so the report has the component
#       table's baseline / CL-SLT / SCL-SLT rows (with "random" and "trajectory" in STRATEGIES)
#   SCL_SLT_CACHE [OUT_DIR/cache]  where the synthetic data is generated
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
DEVICE=${DEVICE:-cpu}
EXPERIMENT=${EXPERIMENT:-tiny_hard}
STRATEGIES=${STRATEGIES:-"trajectory random text_semantic visual_curriculum san online_trajectory"}
REFERENCE_EPOCHS=${REFERENCE_EPOCHS:-6}
INTERVAL=${INTERVAL:-2}
CONTRASTIVE_EPOCHS=${CONTRASTIVE_EPOCHS:-12}
TRANSLATE_EPOCHS=${TRANSLATE_EPOCHS:-12}
EVAL_EVERY=${EVAL_EVERY:-4}
BASELINE=${BASELINE:-0}
SHARE_REFERENCE=${SHARE_REFERENCE:-true}
read -r -a EXTRA_OVERRIDES <<<"${EXTRA:-}"
export SCL_SLT_CACHE=${SCL_SLT_CACHE:-$OUT/cache}
read -r -a STRATEGY_LIST <<<"$STRATEGIES"
START=$SECONDS

echo "== pipelines (reference run, scoring, stage 1 + stage 2 per strategy): seeds $SEEDS"
for seed in $SEEDS; do
  "$PYTHON" -m scl_slt.pipeline "out_dir=$OUT/seed$seed" \
    "strategies=[$(IFS=,; echo "${STRATEGY_LIST[*]}")]" \
    "reference_epochs=$REFERENCE_EPOCHS" "contrastive_epochs=$CONTRASTIVE_EPOCHS" \
    "translate_epochs=$TRANSLATE_EPOCHS" "interval=$INTERVAL" "device=$DEVICE" \
    "share_reference=$SHARE_REFERENCE" \
    "experiment=$EXPERIMENT" "seed=$seed" "stage.eval_every=$EVAL_EVERY" \
    "${EXTRA_OVERRIDES[@]}"
done

echo "== test evaluation of the stage-1 runs (Hydra multirun over runs)"
runs=()
for seed in $SEEDS; do
  for strategy in "${STRATEGY_LIST[@]}"; do
    case $strategy in
      trajectory) run=$OUT/seed$seed/2-selective ;;
      *) run=$OUT/seed$seed/2-$strategy ;;
    esac
    # With REFERENCE_EPOCHS = CONTRASTIVE_EPOCHS the reference run is the random stage 1.
    [[ $strategy == random && ! -d $run ]] && run=$OUT/seed$seed/1-reference
    [[ -f "$run/eval/best/test/metrics.json" ]] || runs+=("$run")
  done
done
if ((${#runs[@]})); then
  "$PYTHON" -m scl_slt.evaluate -m "run_dir=$(IFS=,; echo "${runs[*]}")" split=test \
    checkpoint=best "device=$DEVICE" "hydra.sweep.dir=$OUT/.sweeps/evaluate"
fi

if [[ $BASELINE == 1 ]]; then
  echo "== baseline end-to-end (translation only, TRANSLATE_EPOCHS, Hydra multirun over seeds)"
  todo=()
  for seed in $SEEDS; do
    [[ -f "$OUT/baseline/seed$seed/eval/best/test/metrics.json" ]] || todo+=("$seed")
  done
  if ((${#todo[@]})); then
    "$PYTHON" -m scl_slt.train -m "experiment=$EXPERIMENT" "seed=$(IFS=,; echo "${todo[*]}")" \
      stage=translate "stage.epochs=$TRANSLATE_EPOCHS" "stage.eval_every=$EVAL_EVERY" \
      "device=$DEVICE" resume=auto "run_dir=$OUT/baseline/seed\${seed}" \
      "hydra.sweep.dir=$OUT/.sweeps/baseline" "${EXTRA_OVERRIDES[@]}"
    for seed in "${todo[@]}"; do
      "$PYTHON" -m scl_slt.evaluate "run_dir=$OUT/baseline/seed$seed" split=test checkpoint=best \
        "device=$DEVICE"
    done
  fi
fi

echo "== report"
"$PYTHON" -m scl_slt.report "$OUT/seed*" $([[ $BASELINE == 1 ]] && echo "$OUT/baseline") \
  --out "$OUT/report"
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
