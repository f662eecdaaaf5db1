#!/usr/bin/env bash
# Side by side with the authors' code (issue 11): their two stages, unmodified (only the model-loading glue of
# run_authors.py: fp32, CPU), against `achilles-fast find --scope paper` with each Stage 2 strategy, same text and
# settings (the built-in passage, K=100, alpha=5, epsilon 1, step 1); prints the figures of RESULTS.md.
#
#   bash benchmarks/paper_sidebyside/run.sh stories   # ../shared/models/stories260K (~5 min; their Stage 2 is slow)
#   bash benchmarks/paper_sidebyside/run.sh smollm2   # SmolLM2-135M (theirs ~230 s, ~20 GB peak RAM: run alone)
#   bash benchmarks/paper_sidebyside/run.sh PATH      # any HF folder
#
# Their repository (MIT) is cloned at a pinned commit into $AUTHORS_DIR (default ~/.cache/achilles_fast/authors);
# it is never copied into this repository. Offline: point AUTHORS_DIR at an existing checkout.
# EPS=0.3: another epsilon (their Stage 1 output is reused); STRATEGIES="first linear bisect" (default: all three);
# OUT=DIR for the outputs (default /tmp/paper_sidebyside/<tag>); STAGE1_DTYPES="float32 bfloat16": ours also with
# the certified bf16 Stage 1 (`--stage1-dtype bfloat16`, outputs ours_<strategy>_bfloat16.*).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG=${1:?stories, smollm2 or a model folder}
COMMIT=9ccf619c12579e933567c77204ad3c84f9e824fb
export AUTHORS_DIR=${AUTHORS_DIR:-$HOME/.cache/achilles_fast/authors}
if [ ! -f "$AUTHORS_DIR/method/1_importance_evaluation.py" ]; then
  git clone -q https://github.com/qqqqqqqzx/The-Achilles-Heel-of-LLMs "$AUTHORS_DIR"
  git -C "$AUTHORS_DIR" checkout -q "$COMMIT"
fi
SHARED=${ACHILLES_FAST_SHARED:-$REPO/../shared}
case $TAG in
  stories) MODEL=$SHARED/models/stories260K ;;
  smollm2) MODEL=$(python -c "from achilles_fast.models.loading import resolve, cached_gguf_dir
k, p = resolve('smollm2-135m'); print(cached_gguf_dir(p) if k == 'gguf' else p)" | tail -1) ;;  # the fp32 conversion
  *) MODEL=$TAG; TAG=$(basename "$TAG") ;;
esac
[ -f "$MODEL/config.json" ] || { echo "error: no HF folder for '$TAG' ($MODEL)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
EPS=${EPS:-1.0}; SUF=$([ "$EPS" = "1.0" ] && echo "" || echo "_eps$EPS")
OUT=${OUT:-/tmp/paper_sidebyside/$TAG}; mkdir -p "$OUT"; cd "$OUT"
TEXT=$(python -c "from achilles_fast.method.text import DEFAULT_TEXT; print(DEFAULT_TEXT)")
T="/usr/bin/time -v -o"
if [ ! -s theirs_stage1.json ]; then
  echo "== load: $(uptime)"
  $T theirs_stage1.time python "$HERE/run_authors.py" stage1 --model_path "$MODEL" --input_text "$TEXT" \
     --noise_scale 5 --num_samples 100 --output_file theirs_stage1.json --log_file theirs_stage1.log > /dev/null 2>&1
fi
echo "== load: $(uptime)"
$T theirs_stage2$SUF.time python "$HERE/run_authors.py" stage2 --model_path "$MODEL" \
   --neuron_file theirs_stage1.json --test_text "$TEXT" --step_size 1 --max_magnitude "$EPS" \
   --output_file theirs_stage2$SUF.json --log_file theirs_stage2$SUF.log > /dev/null 2>&1
for S in ${STRATEGIES:-first linear bisect}; do
  for D in ${STAGE1_DTYPES:-float32}; do
    if [ "$D" = float32 ]; then V=$S; X=(); else V=${S}_$D; X=(--stage1-dtype "$D"); fi
    echo "== load: $(uptime)"
    $T ours_$V$SUF.time achilles-fast find "$MODEL" --scope paper --k 100 --alpha 5 --epsilon "$EPS" --strategy "$S" \
       --top-report 1000 --max-neurons 1000 "${X[@]}" --out ours_$V$SUF.json > ours_$V$SUF.log 2>&1 || true
  done
done
python "$HERE/compare.py" "$OUT" "$SUF"
