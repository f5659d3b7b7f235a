#!/usr/bin/env bash
# EMR bootstrap action: install the Spark jobs' pinned Python packages for Python 3.11 on every node.
#   install-python-deps.sh s3://bucket/.../requirements.txt
# Idempotent: re-running installs nothing new. Needs no credentials beyond the instance profile.
set -euo pipefail

requirements_uri="${1:?usage: install-python-deps.sh S3_URI_OF_REQUIREMENTS_TXT}"
python=/usr/bin/python3.11
workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

if ! command -v "${python}" >/dev/null 2>&1; then
  sudo dnf install -y -q python3.11 python3.11-pip
fi
if ! "${python}" -m pip --version >/dev/null 2>&1; then
  sudo dnf install -y -q python3.11-pip
fi

aws s3 cp --only-show-errors "${requirements_uri}" "${workdir}/requirements.txt"
# System-wide, so YARN containers running as other users import the same packages.
sudo "${python}" -m pip install --quiet --no-input --disable-pip-version-check \
  --requirement "${workdir}/requirements.txt"
"${python}" -c "import tensorflow, PIL, pyarrow, pandas; print('orchard bootstrap ok: tensorflow', tensorflow.__version__)"
