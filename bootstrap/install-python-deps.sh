#!/usr/bin/env bash
# EMR bootstrap action: install the Spark jobs' pinned Python packages for Python 3.11 on every node,
# from the wheelhouse staged in the lake: the nodes need S3 only, never PyPI (private subnets
# without NAT work with an S3 gateway endpoint).
#   install-python-deps.sh s3://bucket/.../requirements.txt s3://bucket/.../wheelhouse.tar
# Idempotent: re-running installs nothing new. Needs no credentials beyond the instance profile.
# ORCHARD_BOOTSTRAP_PYTHON and ORCHARD_BOOTSTRAP_SUDO (empty: no sudo) exist for the test that runs
# this script for real in a throwaway virtualenv.
set -euo pipefail

requirements_uri="${1:?usage: install-python-deps.sh REQUIREMENTS_S3_URI WHEELHOUSE_S3_URI}"
wheelhouse_uri="${2:?usage: install-python-deps.sh REQUIREMENTS_S3_URI WHEELHOUSE_S3_URI}"
python="${ORCHARD_BOOTSTRAP_PYTHON:-/usr/bin/python3.11}"
sudo_cmd=()
if [[ -n "${ORCHARD_BOOTSTRAP_SUDO-sudo}" ]]; then
  sudo_cmd=("${ORCHARD_BOOTSTRAP_SUDO-sudo}")
fi
workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

# Python 3.11 itself comes from the distribution (Amazon Linux's repositories) when a node lacks it.
if ! command -v "${python}" >/dev/null 2>&1; then
  "${sudo_cmd[@]}" dnf install -y -q python3.11
fi

aws s3 cp --only-show-errors "${requirements_uri}" "${workdir}/requirements.txt"
aws s3 cp --only-show-errors "${wheelhouse_uri}" "${workdir}/wheelhouse.tar"
mkdir "${workdir}/wheels"
tar -xf "${workdir}/wheelhouse.tar" -C "${workdir}/wheels"

# pip from the staged wheel when the node's Python has none: pip runs from its own wheel file.
if ! "${python}" -m pip --version >/dev/null 2>&1; then
  pip_wheel="$(find "${workdir}/wheels" -maxdepth 1 -name 'pip-*.whl' | head -n 1)"
  [[ -n "${pip_wheel}" ]] || { echo "no pip wheel in ${wheelhouse_uri}" >&2; exit 1; }
  "${sudo_cmd[@]}" "${python}" "${pip_wheel}/pip" install --quiet --no-input --disable-pip-version-check \
    --no-index --find-links "${workdir}/wheels" pip
fi
# System-wide, so YARN containers running as other users import the same packages; --no-index:
# only the staged wheels, so a missing one fails here instead of reaching for PyPI.
"${sudo_cmd[@]}" "${python}" -m pip install --quiet --no-input --disable-pip-version-check \
  --no-index --find-links "${workdir}/wheels" --requirement "${workdir}/requirements.txt"

# Import every pinned distribution by its top-level modules (read from its installed metadata).
"${python}" - "${workdir}/requirements.txt" <<'PY'
import importlib
import importlib.metadata as md
import sys

names = [line.split("#")[0].split("==")[0].strip() for line in open(sys.argv[1])]
for name in filter(None, names):
    dist = md.distribution(name)
    tops = (dist.read_text("top_level.txt") or "").split() or sorted(
        {f.parts[0] for f in dist.files or [] if f.suffix == ".py" and len(f.parts) > 1}
    )
    for top in (t for t in tops if not t.startswith(("_", "."))):
        importlib.import_module(top)
    print(f"orchard bootstrap ok: {name} {dist.version} ({', '.join(tops)})")
PY
