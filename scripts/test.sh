#!/usr/bin/env bash
# The test command: linters, then pytest (modules, lab, playbooks via molecule).
#   scripts/test.sh           the whole suite (make test, what CI runs): budget 15 min on 2 cores
#   scripts/test.sh --quick   what needs no lab (make test-quick): budget 90 s
# Extra arguments go to pytest. Every run ends with its slowest 20 tests and its total time.
# pytest runs in REEFGUIDE_TEST_WORKERS processes (pytest-xdist; default 3 for the
# whole suite, which often waits on its labs, and 2 for the quick tier). A file's tests
# share one process (its labs are module fixtures) except in the files tests/conftest.py
# spreads; the heaviest files go first (conftest's order, kept: --no-loadscope-reorder).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
start=$(date +%s)
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
  set -- -m "not full" "$@"
fi
.venv/bin/ruff check --quiet .
NO_COLOR=1 .venv/bin/ansible-lint -q --nocolor
workers="${REEFGUIDE_TEST_WORKERS:-$([ "$quick" = 1 ] && echo 2 || echo 3)}"
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadgroup --no-loadscope-reorder "$@"
fi
status=0
.venv/bin/pytest tests -q -p no:cacheprovider --durations=20 --durations-min=0 "$@" || status=$?
echo "test.sh: $([ "$quick" = 1 ] && echo "quick tier" || echo "whole suite") took $(( $(date +%s) - start )) s" \
     "(budget: $([ "$quick" = 1 ] && echo "90 s" || echo "15 min, set-up included"))"
exit "$status"
