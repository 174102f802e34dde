#!/usr/bin/env bash
# The test command: linters, then pytest (modules, lab, playbooks via molecule).
#   scripts/test.sh           the whole suite (make test, what CI runs): budget 15 min on 2 cores
#   scripts/test.sh --quick   what needs no lab (make test-quick): budget 90 s
# Extra arguments go to pytest. Every run ends with its slowest 20 tests and its total time.
# pytest runs in REEFGUIDE_TEST_WORKERS processes (pytest-xdist; default 3 for the
# whole suite, and 2 for the quick tier). A file's tests share one process (--dist loadfile):
# its labs are module fixtures. Files go out longest first (tests/conftest.py LONGEST_FIRST;
# --no-loadscope-reorder keeps that order instead of xdist's by number of tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
start=$(date +%s)
tier="whole suite" budget="15 min, set-up included" workers="${REEFGUIDE_TEST_WORKERS:-3}"
if [ "${1:-}" = "--quick" ]; then
  shift
  tier="quick tier" budget="90 s" workers="${REEFGUIDE_TEST_WORKERS:-2}"
  set -- -m "not full" "$@"
fi
.venv/bin/ruff check --quiet .
# ansible-lint (about 20 s, mostly one core) runs beside pytest; its findings print after the tests
lint_log="$(mktemp)"
trap 'rm -f "$lint_log"' EXIT
NO_COLOR=1 .venv/bin/ansible-lint -q --nocolor >"$lint_log" 2>&1 &
lint_pid=$!
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
status=0
.venv/bin/pytest tests -q -p no:cacheprovider --durations=20 --durations-min=0 "$@" || status=$?
if ! wait "$lint_pid"; then
  echo "test.sh: ansible-lint failed:"
  cat "$lint_log"
  status=1
fi
echo "test.sh: $tier took $(( $(date +%s) - start )) s (budget: $budget)"
exit "$status"
