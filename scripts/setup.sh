#!/usr/bin/env bash
# Installs what reefguide-efs needs on this machine, idempotently:
#   Debian packages the lab needs (sudo, curl, util-linux, the instance's python3-boto3),
#   a virtual environment in .venv with the pinned Python packages (requirements.txt).
# Re-running it does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(sudo curl util-linux python3 python3-boto3 python3-venv)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages (requirements.txt)"
  # pip compiles the bytecode of every file it installs, one at a time: 81-87 s on 2 cores, most
  # of it for the 92 collections the `ansible` package ships and nothing here imports. So it
  # installs without, and compileall writes the bytecode on every core, for all but those
  # collections (amazon.aws and ansible.posix are used): 38 s in all. The bytecode must be
  # written here: a machine with PYTHONDONTWRITEBYTECODE=1 never writes it on first use.
  .venv/bin/pip install -q --no-compile --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m compileall -q -j 0 -x '/ansible_collections/(?!amazon/aws/|ansible/posix/)' \
    .venv/lib/python3*/site-packages
  echo "$want" > "$stamp"
fi
