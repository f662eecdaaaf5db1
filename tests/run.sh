#!/usr/bin/env bash
# The project's test command (README set-up step 2). Extra pytest arguments are passed through, e.g.
#   bash tests/run.sh -m slow        (slow tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest "$@"
