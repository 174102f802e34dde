#!/usr/bin/env bash
# The test command: pytest (modules, lab, playbooks via molecule) and linters.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
.venv/bin/ruff check --quiet .
NO_COLOR=1 .venv/bin/ansible-lint -q --nocolor
.venv/bin/pytest tests -q -p no:cacheprovider "$@"
