#!/usr/bin/env bash
# Issue 22: compare on the three checkpoint families built by make.py, and the fine-tune family's cost against
# separate find commands plus the transfer evaluations done by hand (mask). Run alone (timings); load printed.
#   bash benchmarks/compare_families/run.sh [FAMILIES_DIR=out/families] [RESULTS_DIR=out/compare]
set -euo pipefail
F=${1:-out/families}
R=${2:-out/compare}
mkdir -p "$R"
load() { echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; }

echo "== fine-tuning (SmolLM2-135M base vs fine-tuned on Python code)"; load
/usr/bin/time -f "compare wall %e s" achilles-fast compare "$F/smollm2-base" "$F/smollm2-code-step75" \
  "$F/smollm2-code-step150" --out "$R/finetune" --quiet 2>&1 | grep -v "^\[" | tail -8; load

echo "== quantisation (SmolLM2-135M as shipped (Q4_1 GGUF, dequantised) vs RTN 8- and 4-bit round trips)"; load
achilles-fast compare smollm2-135m "$F/smollm2-rtn8" "$F/smollm2-rtn4" --out "$R/quantization" --quiet 2>&1 \
  | grep -v "^\[" | tail -6

echo "== emergence (tiny Llama trained from scratch on WikiText-2; revisions stepN in a hub cache)"; load
revs=$(ls "$F/hub/models--achilles-fast--tiny-llama-wikitext/refs" | sed 's|^|achilles-fast/tiny-llama-wikitext@|')
HF_HUB_CACHE="$F/hub" HF_HUB_OFFLINE=1 achilles-fast compare $revs --order revision --out "$R/emergence" \
  --strategy bisect --max-neurons 400 --quiet 2>&1 | grep -v "^\[" | tail -12

echo "== the same fine-tune comparison by hand: 3 x find + 9 x mask (each a fresh process, as a user runs them)"; load
H="$R/by_hand"; mkdir -p "$H"
start=$(date +%s.%N)
for c in smollm2-base smollm2-code-step75 smollm2-code-step150; do
  achilles-fast find "$F/$c" --out "$H/$c.json" --quiet > /dev/null 2>&1 || true
done
for a in smollm2-base smollm2-code-step75 smollm2-code-step150; do
  for b in smollm2-base smollm2-code-step75 smollm2-code-step150; do
    achilles-fast mask "$F/$b" --neurons "$H/$a.json" --out "$H/$a-in-$b.json" > /dev/null 2>&1 || true
  done
done
end=$(date +%s.%N)
echo "by hand wall $(echo "$end - $start" | bc) s (no random control, no report)"; load
