#!/usr/bin/env bash
# Wall time of `achilles-fast study` on SmolLM2-135M, --quick and full, each into a fresh folder (no cached
# sections), with the machine's load printed beside each figure. Usage: bash benchmarks/bench_study.sh [MODEL]
set -euo pipefail
model=${1:-smollm2-135m}
achilles-fast find "$model" --k 2 --quiet > /dev/null 2>&1 || true   # warm-up: GGUF conversion cache, page cache
for mode in quick full; do
  out=$(mktemp -d /tmp/bench_study_${mode}.XXXXXX)
  flag=$([ "$mode" = quick ] && echo --quick || true)
  echo "== $mode: $(uptime)"
  start=$(date +%s.%N)
  achilles-fast study "$model" $flag --out "$out" --quiet > "$out/verdicts.txt"
  end=$(date +%s.%N)
  echo "$mode wall $(python -c "print(f'{$end - $start:.0f}')") s (budget: quick < 300 s, full < 1200 s); after: $(uptime)"
  python - "$out/study.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("  per section (s):", ", ".join(f"{s['name']} {s['seconds']:.0f}" for s in d["sections"]),
      f"| shared Stage 1 {d['timings'].get('stage1', 0):.0f}")
PY
done
