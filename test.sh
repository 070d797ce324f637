#!/usr/bin/env bash
# The tests: set everything up (scripts/setup-env.sh), then lint and format-check, check the
# generated C headers and JSON Schemas, and run pytest with these arguments. A pytest run that collects no test
# is a failure.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-env.sh
.venv/bin/ruff check orchestrator tests
.venv/bin/ruff format --check orchestrator tests
.venv/bin/dmalab spec header --check
.venv/bin/dmalab spec schema --check
status=0
.venv/bin/pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
