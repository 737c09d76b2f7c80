#!/usr/bin/env bash
# The GPU checks in one command: every figure printed, every failure named, a summary at the end.
#
#   scripts/gpu_check.sh            # on a machine with a CUDA GPU: under 10 minutes (the caps below)
#
# Steps (each in its own function, under its own `timeout`; a failure never stops the others):
#   gpu-tests    the tests that carry the `gpu` marker (pytest -m gpu; they are listed first)
#   train-bench  scripts/bench_train_step.py --device cuda at paper scale: PHOENIX14T frames,
#                stages 1, 2 and decode, configs plain and best
#   all-pairs    scripts/bench_all_pairs.py --device cuda, once in bf16 and once in fp32
#   pipeline     python -m scl_slt.pipeline device=cuda, 2 + 2 + 2 epochs of the tiny model
#   resume       python -m scl_slt.train (tiny model) stopped by stage.max_steps, resumed with
#                resume=auto to the end, and compared with an uninterrupted run: the last
#                checkpoints' weights (rundir.checkpoint.load_weights), the max |difference|
#                printed, within RESUME_ATOL (CUDA's non-deterministic kernels, e.g. cuDNN's
#                convolution backward, may break bitwise equality; on CPU it is bitwise: 0)
#
# Without a GPU (torch.cuda.is_available() false, or FORCE_CPU=1) every CUDA part says
# "skipped" and why, and the cheap CPU parts run instead: the tiny training-step benchmark
# (--tiny), a small all-pairs run (N = 256) and the resume check on CPU (bitwise).
# Exit status: 0 when no step that ran failed (skipped steps never fail the check), 1 otherwise,
# 130 when interrupted (the summary is printed in every case).
#
# Settings (environment variables; defaults in brackets):
#   PYTHON     [.venv/bin/python if it exists, else python]  (relative to the repository root)
#   OUT        [a new temporary directory]  logs (OUT/logs/<step>.log), runs, synthetic-data cache
#   FORCE_CPU  [0]  1: behave as on a machine without a GPU
#   STEPS      ["gpu-tests train-bench all-pairs pipeline resume"]  the steps to run, in order
#   Time caps in seconds (the CUDA ones add up to 540 s; a command still running 5 s after its
#   cap is killed):
#   GPU_TESTS_TIMEOUT [60]  TRAIN_BENCH_TIMEOUT [200]  ALL_PAIRS_TIMEOUT [50, per dtype]
#   PIPELINE_TIMEOUT [90]  RESUME_TIMEOUT [90, its three training runs and the comparison]
#   CPU_TIMEOUT [240]  each CPU step (the resume check's four parts together)
#   BENCH_ARGS      [""]  more flags for bench_train_step.py on CUDA (e.g. "--steps 5 --batch 8")
#   ALL_PAIRS_ARGS  [""]  more flags for bench_all_pairs.py on CUDA (e.g. "--n 2000")
#   LABELS          [found]  PHOENIX14T labels.train for bench_all_pairs.py (default: the first
#                   that exists of $PHOENIX14T_LABELS/labels.train and, from the repository,
#                   ../shared/data/phoenix14t/labels.train and shared/data/phoenix14t/labels.train)
#   RESUME_STOP [4]  the step at which the interrupted run stops (of 6: 24 samples, batch 8, 2 epochs)
#   RESUME_ATOL [1e-4 on CUDA, 0 on CPU]  largest |weight difference| accepted
#   RESUME_ARGS [""]  more Hydra overrides for the three resume runs
#   SCL_SLT_CACHE [OUT/cache]  where the synthetic data is generated
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT/logs" || exit 1
OUT=$(cd "$OUT" && pwd)
FORCE_CPU=${FORCE_CPU:-0}
STEPS=${STEPS:-"gpu-tests train-bench all-pairs pipeline resume"}
GPU_TESTS_TIMEOUT=${GPU_TESTS_TIMEOUT:-60}
TRAIN_BENCH_TIMEOUT=${TRAIN_BENCH_TIMEOUT:-200}
ALL_PAIRS_TIMEOUT=${ALL_PAIRS_TIMEOUT:-50}
PIPELINE_TIMEOUT=${PIPELINE_TIMEOUT:-90}
RESUME_TIMEOUT=${RESUME_TIMEOUT:-90}
CPU_TIMEOUT=${CPU_TIMEOUT:-240}
read -r -a BENCH_ARGS <<<"${BENCH_ARGS:-}"
read -r -a ALL_PAIRS_ARGS <<<"${ALL_PAIRS_ARGS:-}"
read -r -a RESUME_ARGS <<<"${RESUME_ARGS:-}"
RESUME_STOP=${RESUME_STOP:-4}
export SCL_SLT_CACHE=${SCL_SLT_CACHE:-$OUT/cache}

# The tiny model of the tests (tests/conftest.py TINY_OVERRIDES): 3 steps per epoch, 2 epochs.
TINY_TRAIN=(
  data=synthetic model=tiny
  data.synthetic.num_train=24 data.synthetic.num_dev=6 data.synthetic.num_test=6
  data.synthetic.feature_dim=16 model.sign_embedding.feature_dim=16 model.sign_embedding.hidden=32
  model.d_model=32 model.ffn_dim=64 model.attention_heads=2 model.encoder_layers=1
  model.decoder_layers=1 model.similarity.proj_dim=16 model.generation.num_beams=1
  model.generation.max_length=12 stage.epochs=2 stage.batch_size=8 stage.eval_every=0
  stage.log_every=1
)

# ------------------------------------------------------------------------------- bookkeeping
RESULT_NAMES=()
RESULT_STATUS=()
RESULT_SECONDS=()
FAILED=0
INTERRUPTED=0
trap 'INTERRUPTED=1' INT TERM

record() {  # record NAME STATUS SECONDS; any status but ok / skipped / none counts as a failure
  RESULT_NAMES+=("$1")
  RESULT_STATUS+=("$2")
  RESULT_SECONDS+=("$3")
  case $2 in
    ok* | skipped* | none*) ;;
    *) FAILED=$((FAILED + 1)) ;;
  esac
}

skip() {  # skip NAME REASON [DETAIL]: the reason goes into the summary, the detail is printed
  echo "[$1] skipped: $2${3:+ ($3)}"
  record "$1" "skipped: $2" 0
}

status_of() {  # status_of RC TIMEOUT
  case $1 in
    0) echo ok ;;
    124 | 137) echo "TIMEOUT (cap $2 s)" ;;
    130) echo "INTERRUPTED" ;;
    *) echo "FAIL (exit $1)" ;;
  esac
}

# run NAME TIMEOUT SHOW CMD...: CMD under `timeout`, its output in OUT/logs/NAME.log and, with
# SHOW=1, on the terminal too (SHOW=0 prints the log's last lines only when the command fails).
# Sets RC and ELAPSED. --foreground keeps CMD in this terminal's process group, so Ctrl-C stops it.
run() {
  local name=$1 cap=$2 show=$3 log="$OUT/logs/$1.log" start=$SECONDS
  shift 3
  local shown=() word
  for word in "$@"; do  # a multi-line argument (a python -c program) is shown by its name
    if [[ $word == *$'\n'* ]]; then shown+=("<program>"); else shown+=("$word"); fi
  done
  echo "[$name] \$ ${shown[*]}  (cap ${cap} s, log $log)"
  if [[ $show == 1 ]]; then
    timeout --foreground -k 5 "$cap" "$@" 2>&1 | tee "$log"
    RC=${PIPESTATUS[0]}
  else
    timeout --foreground -k 5 "$cap" "$@" >"$log" 2>&1
    RC=$?
  fi
  ELAPSED=$((SECONDS - start))
  if [[ $RC != 0 ]]; then
    echo "[$name] $(status_of "$RC" "$cap") after ${ELAPSED} s; last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    /'
  fi
}

run_step() {  # run_step NAME TIMEOUT SHOW CMD...: run, then record the outcome as one row
  run "$@"
  record "$1" "$(status_of "$RC" "$2")" "$ELAPSED"
}

left() {  # seconds left of a step's cap: left START CAP (at least 1)
  local rest=$(($2 - (SECONDS - $1)))
  ((rest < 1)) && rest=1
  echo "$rest"
}

find_labels() {  # PHOENIX14T labels.train for bench_all_pairs.py, or nothing
  local candidate
  for candidate in "${LABELS:-}" "${PHOENIX14T_LABELS:+$PHOENIX14T_LABELS/labels.train}" \
    "$REPO/../shared/data/phoenix14t/labels.train" "$REPO/shared/data/phoenix14t/labels.train"; do
    if [[ -n $candidate && -f $candidate ]]; then
      echo "$candidate"
      return
    fi
  done
}

# ------------------------------------------------------------------------------------- steps
step_gpu_tests() {
  echo "[gpu-tests] tests carrying the gpu marker (grep -rn 'mark.gpu' tests):"
  local marked
  marked=$(grep -rn "mark.gpu" tests)
  if [[ -n $marked ]]; then sed 's/^/    /' <<<"$marked"; else echo "    (none)"; fi
  if ((!CUDA)); then
    skip gpu-tests "no CUDA device" "pytest -m gpu"
    return
  fi
  run gpu-tests "$GPU_TESTS_TIMEOUT" 1 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests
  if [[ $RC == 5 ]]; then  # pytest: no test collected
    record gpu-tests "none: no test carries the gpu marker" "$ELAPSED"
  else
    record gpu-tests "$(status_of "$RC" "$GPU_TESTS_TIMEOUT")" "$ELAPSED"
  fi
}

step_train_bench() {
  if ((CUDA)); then
    run_step train-bench "$TRAIN_BENCH_TIMEOUT" 1 \
      "$PYTHON" scripts/bench_train_step.py --device cuda --dataset phoenix14t --mode frames \
      --stages 1,2,decode --configs plain,best ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
  else
    skip train-bench "no CUDA device" "paper scale: bench_train_step.py --device cuda; the tiny CPU run follows"
    run_step train-bench-tiny-cpu "$CPU_TIMEOUT" 1 \
      "$PYTHON" scripts/bench_train_step.py --device cpu --tiny
  fi
}

step_all_pairs() {
  local labels
  labels=$(find_labels)
  if ((CUDA)); then
    if [[ -z $labels ]]; then
      record all-pairs "FAIL (no PHOENIX14T labels.train)" 0
      echo "[all-pairs] FAIL: no PHOENIX14T labels.train found; set LABELS=<path>"
      return
    fi
    run_step all-pairs-bf16 "$ALL_PAIRS_TIMEOUT" 1 \
      "$PYTHON" scripts/bench_all_pairs.py --device cuda --dtype bf16 --labels "$labels" \
      ${ALL_PAIRS_ARGS[@]+"${ALL_PAIRS_ARGS[@]}"}
    ((INTERRUPTED)) && return
    run_step all-pairs-fp32 "$ALL_PAIRS_TIMEOUT" 1 \
      "$PYTHON" scripts/bench_all_pairs.py --device cuda --dtype fp32 --labels "$labels" \
      ${ALL_PAIRS_ARGS[@]+"${ALL_PAIRS_ARGS[@]}"}
  else
    skip all-pairs "no CUDA device" "bench_all_pairs.py --device cuda, bf16 and fp32; a small CPU run follows"
    if [[ -z $labels ]]; then
      skip all-pairs-small-cpu "no PHOENIX14T labels.train" "set LABELS=<path>"
      return
    fi
    run_step all-pairs-small-cpu "$CPU_TIMEOUT" 1 \
      "$PYTHON" scripts/bench_all_pairs.py --device cpu --dtype fp32 --n 256 --naive-pairs 50 \
      --labels "$labels"
  fi
}

step_pipeline() {
  if ((!CUDA)); then
    skip pipeline "no CUDA device" "on CPU the pipeline takes minutes: python -m scl_slt.pipeline"
    return
  fi
  run pipeline "$PIPELINE_TIMEOUT" 0 \
    "$PYTHON" -m scl_slt.pipeline device=cuda reference_epochs=2 contrastive_epochs=2 \
    translate_epochs=2 interval=1 out_dir="$OUT/pipeline"
  record pipeline "$(status_of "$RC" "$PIPELINE_TIMEOUT")" "$ELAPSED"
  [[ $RC == 0 ]] && sed -n '/^Test results/,$p' "$OUT/logs/pipeline.log"
}

# Exits 0 when the last checkpoints of RESUMED_RUN and UNINTERRUPTED_RUN are within ATOL:
#   "$PYTHON" -c "$COMPARE_WEIGHTS" RESUMED_RUN UNINTERRUPTED_RUN ATOL
COMPARE_WEIGHTS=$(
  cat <<'PY'
import math
import sys
from pathlib import Path

from scl_slt.rundir.checkpoint import find_latest_checkpoint, load_weights, step_checkpoints

resumed_run, full_run, atol = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
a_dir = find_latest_checkpoint(resumed_run / "checkpoints")
b_dir = find_latest_checkpoint(full_run / "checkpoints")
print(f"resumed run's last checkpoint:       {a_dir}")
print(f"uninterrupted run's last checkpoint: {b_dir}")
if a_dir is None or b_dir is None or a_dir.name != b_dir.name:
    sys.exit("FAIL: the two runs did not end at the same step")
a, b = load_weights(a_dir), load_weights(b_dir)
if a.keys() != b.keys():
    sys.exit(f"FAIL: different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
max_diff, worst, equal = 0.0, "-", 0
for key in sorted(a):
    if a[key].equal(b[key]):
        equal += 1
        continue
    diff = (a[key].double() - b[key].double()).abs().max().item()
    diff = math.inf if math.isnan(diff) else diff
    if diff >= max_diff:
        max_diff, worst = diff, key
print(
    f"max |resumed - uninterrupted| = {max_diff:.3g} (tolerance {atol:g}); "
    f"{equal}/{len(a)} tensors bitwise equal; largest difference in {worst}"
)
steps = step_checkpoints(full_run / "checkpoints")
if len(steps) >= 2:  # for scale: how far training moves the weights between two checkpoints
    prev = load_weights(steps[-2])
    moved = max(
        (b[k].double() - prev[k].double()).abs().max().item()
        for k in b
        if b[k].is_floating_point()
    )
    print(f"for scale: max weight change {steps[-2].name} -> {b_dir.name} = {moved:.3g}")
sys.exit(0 if max_diff <= atol else "FAIL: difference above the tolerance")
PY
)

step_resume() {
  local device atol cap start=$SECONDS dir="$OUT/resume" part status
  if ((CUDA)); then
    device=cuda
    atol=${RESUME_ATOL:-1e-4}
    cap=$RESUME_TIMEOUT
  else
    echo "[resume] no CUDA device: the resume check runs on CPU (tiny model, bitwise)"
    device=cpu
    atol=${RESUME_ATOL:-0}
    cap=$CPU_TIMEOUT
  fi
  local name="resume-$device"
  local common=("${TINY_TRAIN[@]}" "device=$device" ${RESUME_ARGS[@]+"${RESUME_ARGS[@]}"})
  for part in stopped resumed uninterrupted compare; do
    case $part in
      stopped)
        run "$name-$part" "$(left "$start" "$cap")" 0 \
          "$PYTHON" -m scl_slt.train "${common[@]}" "run_dir=$dir/stopped" "stage.max_steps=$RESUME_STOP"
        grep -h "last checkpoint:" "$OUT/logs/$name-$part.log" | sed "s/^/[$name] stopped run: /"
        ;;
      resumed)
        run "$name-$part" "$(left "$start" "$cap")" 0 \
          "$PYTHON" -m scl_slt.train "${common[@]}" "run_dir=$dir/stopped" resume=auto
        if [[ $RC == 0 ]] && ! grep -h "resuming from" "$OUT/logs/$name-$part.log"; then
          echo "[$name] FAIL: the resumed run did not resume from a checkpoint"
          RC=1
        fi
        ;;
      uninterrupted)
        run "$name-$part" "$(left "$start" "$cap")" 0 \
          "$PYTHON" -m scl_slt.train "${common[@]}" "run_dir=$dir/uninterrupted"
        ;;
      compare)
        run "$name-$part" "$(left "$start" "$cap")" 1 \
          "$PYTHON" -c "$COMPARE_WEIGHTS" "$dir/stopped" "$dir/uninterrupted" "$atol"
        ;;
    esac
    if [[ $RC != 0 ]] || ((INTERRUPTED)); then
      status=$(status_of "$RC" "$cap")
      ((INTERRUPTED)) && status=INTERRUPTED
      record "$name" "$status at $part" $((SECONDS - start))
      return
    fi
  done
  record "$name" "ok (max |diff| within $atol)" $((SECONDS - start))
}

# -------------------------------------------------------------------------------------- main
echo "gpu_check: repository $REPO, OUT=$OUT, PYTHON=$PYTHON"
CUDA=0
if ! "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA build', torch.version.cuda)"; then
  echo "gpu_check: FAIL: $PYTHON cannot import torch"
  exit 1
fi
if [[ $FORCE_CPU == 1 ]]; then
  echo "gpu_check: FORCE_CPU=1: every CUDA step is skipped"
elif [[ $("$PYTHON" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null) == True ]]; then
  CUDA=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
else
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): every CUDA step is skipped"
fi

CHECK_START=$SECONDS
for step in $STEPS; do
  ((INTERRUPTED)) && break
  echo
  echo "=== $step ==="
  case $step in
    gpu-tests) step_gpu_tests ;;
    train-bench) step_train_bench ;;
    all-pairs) step_all_pairs ;;
    pipeline) step_pipeline ;;
    resume) step_resume ;;
    *)
      echo "[$step] FAIL: unknown step (known: gpu-tests train-bench all-pairs pipeline resume)"
      record "$step" "FAIL (unknown step)" 0
      ;;
  esac
done

echo
echo "=== summary (OUT=$OUT, $((SECONDS - CHECK_START)) s) ==="
printf '%-28s %-44s %8s\n' step status seconds
for i in "${!RESULT_NAMES[@]}"; do
  printf '%-28s %-44s %8s\n' "${RESULT_NAMES[$i]}" "${RESULT_STATUS[$i]}" "${RESULT_SECONDS[$i]}"
done
if ((INTERRUPTED)); then
  echo "gpu_check: interrupted"
  exit 130
fi
if ((FAILED)); then
  echo "gpu_check: $FAILED step(s) failed (logs under $OUT/logs)"
  exit 1
fi
echo "gpu_check: no step failed"
exit 0
