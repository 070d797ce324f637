#!/usr/bin/env bash
# The main job: set everything up (scripts/setup-env.sh), then `dmalab run` with these arguments.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-env.sh
exec .venv/bin/dmalab run "$@"
