#!/usr/bin/env bash
# The paper's tables on PHOENIX-2014-T and CSL-Daily with mBART-large-50 and the paper's
# hyper-parameters (method.md §6: stage 1 80 epochs, batch 16; stage 2 200 epochs, batch 8; AdamW
# 1e-4 with cosine decay; label smoothing 0.2; LoRA r16/a32; beam 8), several seeds, then the report.
#
#   scripts/reproduce_paper.sh OUT_DIR
#
# Every run is one of the experiment configs (configs/experiment/<name>.yaml, the same file for
# both datasets), launched per dataset as a Hydra multirun over experiments x seeds with
# `experiment=<name> data=<dataset> runs_root=OUT_DIR`, so the runs chain through their config
# paths: OUT_DIR/<dataset>/seed<S>/<run> (row of the component table in brackets):
#   reference   experiment=reference  random contrastive stage, snapshots every 5 epochs  [w/ CL]
#   (scoring)   python -m scl_slt.score delta=$DELTA -> reference/pair_scores.npy
#   scl         experiment=scl        selective contrastive stage (log schedule, CiCo)    [w/ SCL]
#   scl-slt     experiment=translate  translation from scl                                 [SCL-SLT]
#   cl-slt      experiment=cl_slt     translation from reference                           [CL-SLT]
#   baseline    experiment=baseline   translation from scratch                 [baseline end-to-end]
# The reference run is the random contrastive stage of the paper's "w/ CL" and "CL-SLT" rows too
# (same model, loss and hyper-parameters; the snapshots do not change training), which saves one
# 80-epoch stage per seed. Every run is evaluated on test with its best-on-dev checkpoint.
# With ABLATIONS=1 (default) the ablations of the joint (one-stage, w/ SCL) setting follow for the
# datasets in ABLATION_DATASETS (the paper reports them on PHOENIX-2014-T), under ablation/:
#   schedule-{hard_only,easy_only,linear,sqrt}  experiment=schedule_*  (log is scl)
#   interval-{1,5,10}   experiment=interval_*    from reference-interval-{1,5,10}
#   similarity-{cls,mean}  experiment=similarity_*  from reference-{cls,mean} (CiCo is scl)
# The interval references are scored with INTERVAL_DELTA [span] and SPAN_SNAPSHOTS [4]:
# delta=span gives δ = S^(4 x interval) - S^0 (epochs 0-4 at interval 1, 0-40 at interval 10), so
# the interval sets the span of training δ covers (selection/trajectory_window.py). Under
# delta=endpoints (DELTA, the paper's default) only the first and last snapshot enter and the
# interval rows would be re-runs of scl. A run shorter than SPAN_SNAPSHOTS x interval epochs
# stops the scoring with an error naming span_snapshots (e.g. a smoke run with EXTRA
# stage.epochs=2: set INTERVAL_DELTA=endpoints there). The report labels span-scored rows
# "1 (span 4)", "5 (span 4)", "10 (span 4)" (from each reference's pair_scores.json "window"), so
# they are compared with each other and never averaged with scl's whole-run "5" row.
#
# Environment (defaults in brackets):
#   PHOENIX14T_ROOT, CSL_DAILY_ROOT (or *_LABELS / *_FRAMES / *_FRAME_CACHE): read by
#       configs/data/{phoenix14t,csl_daily}.yaml; a missing path fails naming the key.
#   MBART_PATH [model.mbart_path of configs/model/mbart_large_50.yaml]: a directory or a Hugging Face id in the LOCAL cache
#       (nothing is downloaded); MBART_PATH_PHOENIX14T / MBART_PATH_CSL_DAILY override it per
#       dataset, e.g. a trimmed model from `python -m scl_slt.trim_vocab`.
#   The ImageNet ResNet-18 weights come from the local torch hub cache (model.sign_embedding).
#   DATASETS ["phoenix14t csl_daily"]: data configs (configs/data/), each passed as data=<dataset>;
#       e.g. phoenix14t_features for pre-extracted features (runs still go to OUT_DIR/phoenix14t,
#       which follows data.name; name it in ABLATION_DATASETS too for its ablations)
#   SEEDS ["0 1 2"]  DELTA [endpoints]  ABLATIONS [1]  ABLATION_DATASETS [phoenix14t]
#   INTERVAL_DELTA [span]  SPAN_SNAPSHOTS [4]: scoring of the interval references (see above)
#   NPROC [1]: GPUs per run (torch.distributed.run, DDP; then runs go one by one instead of as a
#       Hydra multirun); the global batch stays 16 / 8.
#   PYTHON [python]  EXTRA [""]: more Hydra overrides for every training run (they come last and
#       win over this script's data=<dataset>, so `EXTRA="data=synthetic model=tiny
#       stage.epochs=2"` runs the whole grid on the synthetic data: runs go to
#       OUT_DIR/synthetic/..., since run dirs follow data.name).
#
# GPU and time needs (not measured here: this repository's machines had no GPU and no mBART
# weights; measure before planning): each run holds mBART-large-50 (visual encoder, frozen text
# encoder, decoder; about 0.6 B parameters in all, LoRA trainable) and ResNet-18 over up to 300
# frames of 224x224 per clip, batch 16 in stage 1: plan on 80 GB GPUs (A100/H100 80GB) and lower
# data.max_frames or use NPROC > 1 on smaller ones. The work is counted in epochs over the train
# split (PHOENIX14T 7,096 clips; CSL-Daily 18,401, about 2.6x longer per epoch), per seed:
#   component table: 2 x 80 (stage 1) + 3 x 200 (stage 2) = 760 epochs per dataset;
#   ablations: 4 x 80 (references) + 8 x 80 (selective stages) = 960 epochs per dataset.
# Time = epochs x the time of one epoch, which train.log prints ("epoch 1/80: ... s") after the
# first epoch of the reference run; multiply by the number of seeds. Everything resumes: run the
# script again with the same OUT_DIR after an interruption; finished runs return at once
# (resume=auto finds their last checkpoint) and finished scorings and evaluations are skipped.
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
ABLATION_DATASETS=${ABLATION_DATASETS:-phoenix14t}
DELTA=${DELTA:-endpoints}
INTERVAL_DELTA=${INTERVAL_DELTA:-span}
SPAN_SNAPSHOTS=${SPAN_SNAPSHOTS:-4}
NPROC=${NPROC:-1}
read -r -a EXTRA_OVERRIDES <<<"${EXTRA:-}"
SEED_LIST=$(echo "$SEEDS" | tr -s ' ' ',' | sed 's/^,//; s/,$//')
START=$SECONDS

# sweep EXPERIMENT...: train every experiment for every seed on the current dataset (COMMON
# overrides, data=<dataset> among them, then EXTRA).
sweep() {
  if ((NPROC > 1)); then
    local experiment seed
    for experiment in "$@"; do
      for seed in $SEEDS; do
        "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" \
          -m scl_slt.train "experiment=$experiment" "seed=$seed" "${COMMON[@]}" \
          "${EXTRA_OVERRIDES[@]}"
      done
    done
  else
    "$PYTHON" -m scl_slt.train -m "experiment=$(IFS=,; echo "$*")" "seed=$SEED_LIST" \
      "${COMMON[@]}" "hydra.sweep.dir=$OUT/.sweeps/train" "${EXTRA_OVERRIDES[@]}"
  fi
}

# score_references: pair scores (and the trajectory report) of every reference run that has
# none yet; the interval references with INTERVAL_DELTA (span: SPAN_SNAPSHOTS), the others with
# DELTA. Run dirs follow <runs_root>/<data.name>/seed<S>/, so they are found by pattern.
score_references() {
  local run protocol
  for run in "$OUT"/*/seed*/reference "$OUT"/*/seed*/ablation/reference-*; do
    [[ -f "$run/config.yaml" && ! -f "$run/pair_scores.npy" ]] || continue
    protocol=("delta=$DELTA")
    if [[ $run == */ablation/reference-interval-* ]]; then
      protocol=("delta=$INTERVAL_DELTA")
      [[ $INTERVAL_DELTA != span ]] || protocol+=("span_snapshots=$SPAN_SNAPSHOTS")
    fi
    "$PYTHON" -m scl_slt.score "run_dir=$run" "${protocol[@]}"
  done
}

# evaluate_runs: test evaluation (best-on-dev checkpoint) of every table run not yet evaluated,
# as one Hydra multirun over run dirs. The reference runs of the ablations train exactly as (or,
# for the pooling ones, like) the main reference run and stand in no table: not evaluated.
evaluate_runs() {
  local run runs=()
  for run in "$OUT"/*/seed*/{reference,scl,scl-slt,cl-slt,baseline} \
    "$OUT"/*/seed*/ablation/{schedule,interval,similarity}-*; do
    [[ -f "$run/config.yaml" && ! -f "$run/eval/best/test/metrics.json" ]] || continue
    runs+=("$run")
  done
  ((${#runs[@]})) || return 0
  if ((NPROC > 1)); then
    for run in "${runs[@]}"; do
      "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" \
        -m scl_slt.evaluate "run_dir=$run" split=test checkpoint=best
    done
  else
    "$PYTHON" -m scl_slt.evaluate -m "run_dir=$(IFS=,; echo "${runs[*]}")" split=test \
      checkpoint=best "hydra.sweep.dir=$OUT/.sweeps/evaluate"
  fi
}

for dataset in $DATASETS; do
  key=$(echo "$dataset" | tr '[:lower:]' '[:upper:]')
  mbart_var="MBART_PATH_$key"
  mbart=${!mbart_var:-${MBART_PATH:-}}  # unset: configs/model/mbart_large_50.yaml's path
  COMMON=("data=$dataset" "runs_root=$OUT" resume=auto ${mbart:+"model.mbart_path=$mbart"})
  echo "== $dataset, seeds $SEEDS: component table"
  sweep reference
  score_references
  sweep scl
  sweep translate cl_slt baseline
  if [[ $ABLATIONS == 1 && " $ABLATION_DATASETS " == *" $dataset "* ]]; then
    echo "== $dataset, seeds $SEEDS: ablations (one stage, w/ SCL)"
    sweep reference_interval_1 reference_interval_5 reference_interval_10 reference_cls reference_mean
    score_references
    sweep schedule_hard_only schedule_easy_only schedule_linear schedule_sqrt \
      interval_1 interval_5 interval_10 similarity_cls similarity_mean
  fi
  evaluate_runs
done

echo "== report"
"$PYTHON" -m scl_slt.report "$OUT" --out "$OUT/report"
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
