#!/usr/bin/env bash
# The paper's five-row component table on the built-in synthetic sign language, on CPU, over
# several seeds, then the report (tables with mean ± std over seeds, curves, category chart).
#
#   scripts/reproduce_synthetic.sh OUT_DIR
#
# Rows and the runs that give them (python -m scl_slt.report classifies them from their configs):
#   baseline end-to-end  stage=translate from scratch            OUT/baseline/seed<S>  (Hydra multirun)
#   w/ CL                random contrastive stage, evaluated     OUT/seed<S>/2-random (1-reference
#                        when REFERENCE_EPOCHS = CONTRASTIVE_EPOCHS: the tracker changes nothing)
#   w/ SCL               selective contrastive stage, evaluated  OUT/seed<S>/2-selective
#   CL-SLT               translation from 2-random               OUT/seed<S>/3-translate-random
#   SCL-SLT              translation from 2-selective            OUT/seed<S>/3-translate
# One `python -m scl_slt.pipeline compare_random=true` per seed runs the reference run, the scoring
# and the four runs of the two-stage rows (and evaluates the stage-2 runs on test); the stage-1 runs
# and the baseline are evaluated on test here (best-on-dev checkpoint). The baseline trains for
# as many epochs as stage 2 does, with the same experiment config and overrides. Everything is resumable: run the script again with the same
# OUT_DIR and finished steps are skipped.
#
# Settings (environment variables; defaults in brackets):
#   PYTHON [python]  SEEDS ["0 1 2"]  DEVICE [cpu]
#   EXPERIMENT [tiny]  configs/experiment/<name>.yaml for every training run (the pipeline's default)
#   REFERENCE_EPOCHS [4]  CONTRASTIVE_EPOCHS [12]  TRANSLATE_EPOCHS [12]  INTERVAL [2]
#   EVAL_EVERY [4]  (dev evaluation, which picks the best checkpoint, every N epochs)
#   EXTRA ["" ]     (more Hydra overrides for every training run, e.g. "stage.lr=3e-4")
#   SCL_SLT_CACHE   [OUT_DIR/cache]  where the synthetic data is generated
#   ABLATIONS [0]   1: also the paper's ablation tables (schedule, interval, pooling), by running
#                   the experiment grid of scripts/reproduce_paper.sh (Hydra multiruns) with
#                   DATASETS=synthetic (data=synthetic) and the tiny model and its stage settings
#                   (not EXPERIMENT's), every stage CONTRASTIVE_EPOCHS long, into OUT_DIR/grid/synthetic/seed<S>/; its report is OUT_DIR/grid/report
# The defaults are a short schedule in which the one-stage rows (stage-1 runs) and the baseline
# train equally long (12 epochs); the two-stage rows train 12 + 12. The reference run only needs
# its snapshots (4 epochs, interval 2).
#
# Wall time (measured once, default settings, 3 seeds): 394 s on a 2-core CPU shared with other
# jobs (load average about 5 at the start, near 0 at the end); epochs took from ~1 s (idle CPU)
# to ~20 s (busy CPU), so expect anywhere from about 6 to 60 minutes.
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
REFERENCE_EPOCHS=${REFERENCE_EPOCHS:-4}
CONTRASTIVE_EPOCHS=${CONTRASTIVE_EPOCHS:-12}
TRANSLATE_EPOCHS=${TRANSLATE_EPOCHS:-12}
INTERVAL=${INTERVAL:-2}
EVAL_EVERY=${EVAL_EVERY:-4}
EXPERIMENT=${EXPERIMENT:-tiny}
read -r -a EXTRA_OVERRIDES <<<"${EXTRA:-}"
export SCL_SLT_CACHE=${SCL_SLT_CACHE:-$OUT/cache}

TRAIN_OVERRIDES=(data=synthetic model=tiny "stage.eval_every=$EVAL_EVERY" "${EXTRA_OVERRIDES[@]}")
SEED_LIST=$(echo "$SEEDS" | tr -s ' ' ',' | sed 's/^,//; s/,$//')
START=$SECONDS

echo "== two-stage rows (pipeline per seed): $SEEDS"
for seed in $SEEDS; do
  "$PYTHON" -m scl_slt.pipeline "out_dir=$OUT/seed$seed" compare_random=true \
    "reference_epochs=$REFERENCE_EPOCHS" "contrastive_epochs=$CONTRASTIVE_EPOCHS" \
    "translate_epochs=$TRANSLATE_EPOCHS" "interval=$INTERVAL" "device=$DEVICE" \
    "experiment=$EXPERIMENT" "seed=$seed" "${TRAIN_OVERRIDES[@]}"
done

echo "== baseline end-to-end (Hydra multirun over seeds)"
todo=()
for seed in $SEEDS; do
  [[ -f "$OUT/baseline/seed$seed/eval/best/test/metrics.json" ]] || todo+=("$seed")
done
if ((${#todo[@]})); then
  "$PYTHON" -m scl_slt.train -m "experiment=$EXPERIMENT" "seed=$(IFS=,; echo "${todo[*]}")" stage=translate \
    "stage.epochs=$TRANSLATE_EPOCHS" "device=$DEVICE" resume=auto \
    "run_dir=$OUT/baseline/seed\${seed}" "hydra.sweep.dir=$OUT/.sweeps/baseline" \
    "${TRAIN_OVERRIDES[@]}"
fi

echo "== test evaluation of the one-stage rows and the baseline (Hydra multirun over runs)"
runs=()
for seed in $SEEDS; do
  random_stage1=$OUT/seed$seed/2-random  # the reference run when REFERENCE_EPOCHS = CONTRASTIVE_EPOCHS
  [[ -d $random_stage1 ]] || random_stage1=$OUT/seed$seed/1-reference
  for run in "$OUT/seed$seed/2-selective" "$random_stage1" "$OUT/baseline/seed$seed"; do
    [[ -f "$run/eval/best/test/metrics.json" ]] || runs+=("$run")
  done
done
if ((${#runs[@]})); then
  "$PYTHON" -m scl_slt.evaluate -m "run_dir=$(IFS=,; echo "${runs[*]}")" split=test \
    checkpoint=best "device=$DEVICE" "hydra.sweep.dir=$OUT/.sweeps/evaluate"
fi

if [[ ${ABLATIONS:-0} == 1 ]]; then
  echo "== ablation grid (scripts/reproduce_paper.sh on the synthetic data)"
  # The tiny model's stage settings (configs/experiment/tiny.yaml) over the grid's paper ones.
  grid=("${TRAIN_OVERRIDES[@]}" "device=$DEVICE" "stage.epochs=$CONTRASTIVE_EPOCHS"
        stage.batch_size=16 stage.lr=1e-3 stage.warmup_epochs=1.0)
  PYTHON=$PYTHON SEEDS=$SEEDS DATASETS=synthetic ABLATION_DATASETS=synthetic ABLATIONS=1 \
    EXTRA="${grid[*]}" bash "$(dirname "$0")/reproduce_paper.sh" "$OUT/grid"
fi

echo "== report (seeds $SEED_LIST)"
"$PYTHON" -m scl_slt.report "$OUT/seed*" "$OUT/baseline" --out "$OUT/report"
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
