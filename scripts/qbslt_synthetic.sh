#!/usr/bin/env bash
# Question-based SLT on the synthetic dialogue (CPU): the four rows of the comparison SSL-SSAW
# makes, each a CL-SLT chain (random contrastive stage, translation stage, test) through
# `python -m scl_slt.pipeline`, on the same seeds and budget, then the report (component table:
# each row against the no-question CL-SLT row, mean ± std, 95 % interval, paired bootstrap).
#
#   scripts/qbslt_synthetic.sh OUT_DIR
#
# Rows (configs/experiment/qbslt_<row>.yaml, all on tiny_hard's data):
#   none    video only                                       -> "CL-SLT"
#   concat  the question beside the video, no fusion, no SSL -> "CL-SLT + question (concat)"
#   ssaw    SSAW fusion + video-question InfoNCE + MLM       -> "CL-SLT + question (ssaw, SSL)"
#   gloss   the gloss sequence in the question's place, SSAW + SSL -> "CL-SLT + gloss (ssaw, SSL)"
# and two ablation rows (ROWS="ssaw_plain softmax"): SSAW without the question terms, and the
# SSAW block with softmax weights (+ SSL).
# Settings (environment variables; defaults in brackets):
#   PYTHON [python]  SEEDS ["0 1 2"]  DEVICE [cpu]  ROWS ["none concat ssaw gloss"]
#   CONTRASTIVE_EPOCHS [10]  TRANSLATE_EPOCHS [10]  EVAL_EVERY [2]  EXTRA [""] (Hydra overrides,
#   e.g. data.synthetic.question_overlap=0.25)  SCL_SLT_CACHE [OUT_DIR/cache]
# Everything resumes: run again with the same OUT_DIR and finished steps are skipped.
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
ROWS=${ROWS:-"none concat ssaw gloss"}
CONTRASTIVE_EPOCHS=${CONTRASTIVE_EPOCHS:-10}
TRANSLATE_EPOCHS=${TRANSLATE_EPOCHS:-10}
EVAL_EVERY=${EVAL_EVERY:-2}
read -r -a EXTRA_OVERRIDES <<<"${EXTRA:-}"
export SCL_SLT_CACHE=${SCL_SLT_CACHE:-$OUT/cache}
START=$SECONDS

for row in $ROWS; do
  for seed in $SEEDS; do
    echo "== $row, seed $seed"
    "$PYTHON" -m scl_slt.pipeline "out_dir=$OUT/$row/seed$seed" "strategies=[random]" \
      share_reference=false "reference_epochs=$CONTRASTIVE_EPOCHS" \
      "contrastive_epochs=$CONTRASTIVE_EPOCHS" "translate_epochs=$TRANSLATE_EPOCHS" \
      "experiment=qbslt_$row" "seed=$seed" "device=$DEVICE" "stage.eval_every=$EVAL_EVERY" \
      "${EXTRA_OVERRIDES[@]}"
  done
done

echo "== report"
"$PYTHON" -m scl_slt.report "$OUT" --out "$OUT/report"
echo "wall time of this invocation: $((SECONDS - START)) s; report in $OUT/report"
