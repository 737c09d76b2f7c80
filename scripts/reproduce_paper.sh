#!/usr/bin/env bash
# The paper's tables on PHOENIX-2014-T and CSL-Daily with mBART-large-50 and the paper's
# hyper-parameters (method.md §6: stage 1 80 epochs, batch 16; stage 2 200 epochs, batch 8; AdamW
# 1e-4 with cosine decay; label smoothing 0.2; LoRA r16/a32; beam 8), several seeds, then the report.
#
#   scripts/reproduce_paper.sh OUT_DIR
#
# Per dataset D and seed S, under OUT_DIR/D/seed<S>/ (row of the component table in brackets):
#   1-reference         random contrastive stage, snapshots every 5 epochs   [w/ CL]
#   (scoring)           python -m scl_slt.score -> 1-reference/pair_scores.npy
#   2-selective         selective contrastive stage (log schedule, CiCo)     [w/ SCL]
#   3-translate         translation from 2-selective                          [SCL-SLT]
#   3-translate-random  translation from 1-reference                          [CL-SLT]
#   baseline            translation from scratch                              [baseline end-to-end]
# The reference run is the random contrastive stage of the paper's "w/ CL" and "CL-SLT" rows too
# (same model, loss and hyper-parameters; the snapshots do not change training), which saves one
# 80-epoch stage per seed. Every run is evaluated on test with its best-on-dev checkpoint.
# With ABLATIONS=1 (default) the PHOENIX14T ablations of the joint (one-stage) setting follow, in
# ablation/: schedules hard_only, easy_only, linear, sqrt (log is 2-selective); trajectory
# intervals 1 and 10 (each its own reference run + scoring); CLS and mean pooling (each its own
# reference run with that pooling + scoring). Note: with DELTA=endpoints (the default) the pair
# scores use only the first and the last snapshot, so the interval does not change them; set
# DELTA=slope (for every run of this script) for an interval ablation that can differ.
#
# Environment (defaults in brackets):
#   PHOENIX14T_ROOT, CSL_DAILY_ROOT (or *_LABELS / *_FRAMES / *_FRAME_CACHE): read by
#       configs/data/{phoenix14t,csl_daily}.yaml; a missing path fails naming the key.
#   MBART_PATH [facebook/mbart-large-50]: a directory or a Hugging Face id in the LOCAL cache
#       (nothing is downloaded); MBART_PATH_PHOENIX14T / MBART_PATH_CSL_DAILY override it per
#       dataset, e.g. a trimmed model from `python -m scl_slt.trim_vocab`.
#   The ImageNet ResNet-18 weights come from the local torch hub cache (model.sign_embedding).
#   DATASETS ["phoenix14t csl_daily"]  SEEDS ["0 1 2"]  ABLATIONS [1]  DELTA [endpoints]
#   NPROC [1]: GPUs per run (torch.distributed.run, DDP); the global batch stays 16 / 8.
#   PYTHON [python]  EXTRA [""]: more Hydra overrides for every training run.
#
# GPU and time needs (not measured here: this repository's machines had no GPU and no mBART
# weights; measure before planning): each run holds mBART-large-50 (visual encoder, frozen text
# encoder, decoder; about 0.6 B parameters in all, LoRA trainable) and ResNet-18 over up to 300
# frames of 224x224 per clip, batch 16 in stage 1: plan on 80 GB GPUs (A100/H100 80GB) and lower
# data.max_frames or use NPROC > 1 on smaller ones. The work is counted in epochs over the train
# split (PHOENIX14T 7,096 clips; CSL-Daily 18,401, about 2.6x longer per epoch), per seed:
#   component table: 2 x 80 (stage 1) + 3 x 200 (stage 2) = 760 epochs per dataset;
#   ablations (PHOENIX14T): 4 x 80 (references) + 8 x 80 (selective stages) = 960 epochs.
# Time = epochs x the time of one epoch, which train.log prints ("epoch 1/80: ... s") after the
# first epoch of the reference run; multiply by the number of seeds. Everything resumes: run the
# script again with the same OUT_DIR after an interruption; finished runs are skipped.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python}
DATASETS=${DATASETS:-"phoenix14t csl_daily"}
SEEDS=${SEEDS:-"0 1 2"}
ABLATIONS=${ABLATIONS:-1}
DELTA=${DELTA:-endpoints}
NPROC=${NPROC:-1}
read -r -a EXTRA_OVERRIDES <<<"${EXTRA:-}"
START=$SECONDS

# Run a module on NPROC processes (DDP) or one.
launch() {
  if ((NPROC > 1)); then
    "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" -m "$@"
  else
    "$PYTHON" -m "$@"
  fi
}

# train RUN_DIR OVERRIDES...: one training run with RUN_OVERRIDES (dataset, model, seed) first;
# skipped when finished (marker file RUN_DIR.done).
train() {
  local run=$1
  shift
  if [[ -f "$run.done" ]]; then
    echo "-- done: $run"
    return
  fi
  mkdir -p "$(dirname "$run")"
  launch scl_slt.train "run_dir=$run" resume=auto "${RUN_OVERRIDES[@]}" "$@"
  touch "$run.done"
}

# score REFERENCE_RUN: pair scores and trajectory report (resumes its own work).
score() {
  [[ -f "$1/pair_scores.npy" ]] || "$PYTHON" -m scl_slt.score "run_dir=$1" "delta=$DELTA"
}

# test RUN_DIR: test evaluation of the best-on-dev checkpoint.
test_eval() {
  [[ -f "$1/eval/best/test/metrics.json" ]] ||
    launch scl_slt.evaluate "run_dir=$1" split=test checkpoint=best
}

# reference RUN_DIR INTERVAL OVERRIDES...: a tracked random contrastive run, scored.
reference() {
  local run=$1 interval=$2
  shift 2
  train "$run" stage=contrastive selection=random tracker.enabled=true \
    "tracker.interval=$interval" "$@"
  score "$run"
}

for dataset in $DATASETS; do
  key=$(echo "$dataset" | tr '[:lower:]' '[:upper:]')
  mbart_var="MBART_PATH_$key"
  mbart=${!mbart_var:-${MBART_PATH:-facebook/mbart-large-50}}
  # Paper hyper-parameters are the defaults of configs/stage/{contrastive,translate}.yaml.
  for seed in $SEEDS; do
    R=$OUT/$dataset/seed$seed
    RUN_OVERRIDES=("data=$dataset" model=mbart_large_50 "model.mbart_path=$mbart" "seed=$seed"
                   "${EXTRA_OVERRIDES[@]}")
    echo "== $dataset seed $seed: component table"
    reference "$R/1-reference" 5
    train "$R/2-selective" stage=contrastive selection=trajectory selection.schedule=log \
      "selection.pair_scores=$R/1-reference/pair_scores.npy"
    train "$R/3-translate" stage=translate "stage.init_from=$R/2-selective"
    train "$R/3-translate-random" stage=translate "stage.init_from=$R/1-reference"
    train "$R/baseline" stage=translate
    for run in 1-reference 2-selective 3-translate 3-translate-random baseline; do
      test_eval "$R/$run"
    done

    if [[ $ABLATIONS == 1 && $dataset == phoenix14t ]]; then
      echo "== $dataset seed $seed: ablations (one stage, w/ SCL)"
      A=$R/ablation
      for schedule in hard_only easy_only linear sqrt; do
        train "$A/schedule-$schedule" stage=contrastive selection=trajectory \
          "selection.schedule=$schedule" "selection.pair_scores=$R/1-reference/pair_scores.npy"
        test_eval "$A/schedule-$schedule"
      done
      for interval in 1 10; do
        reference "$A/reference-interval-$interval" "$interval"
        train "$A/interval-$interval" stage=contrastive selection=trajectory \
          "selection.pair_scores=$A/reference-interval-$interval/pair_scores.npy"
        test_eval "$A/interval-$interval"
      done
      for pooling in cls mean; do
        reference "$A/reference-$pooling" 5 "model.similarity.method=$pooling"
        train "$A/pooling-$pooling" stage=contrastive selection=trajectory \
          "model.similarity.method=$pooling" \
          "selection.pair_scores=$A/reference-$pooling/pair_scores.npy"
        test_eval "$A/pooling-$pooling"
      done
    fi
  done
done

echo "== report"
"$PYTHON" -m scl_slt.report "$OUT" --out "$OUT/report"
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
