"""bootstrap/install-python-deps.sh run for real: S3 (moto's server) is the only source of packages.

The wheelhouse is the real one (pip download for the nodes' platform, cached per requirements
hash); the script installs it into a throwaway virtualenv with --no-index, with pip's own
configuration emptied and its index pointed at a closed port, then imports every pinned
distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
import venv

import boto3
import pytest
from moto.server import ThreadedMotoServer

from orchard.aws import staging as artifacts
from tests.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.e2e

REQUIREMENTS = ROOT / "bootstrap" / "requirements.txt"
SCRIPT = ROOT / "bootstrap" / "install-python-deps.sh"
BUCKET = "orchard-bootstrap-test"


@pytest.fixture
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.mark.backs("cluster nodes without internet (private subnet, no NAT)")
def test_bootstrap_installs_the_node_requirements_from_the_staged_wheelhouse_only(s3_server, tmp_path):
    if not (VENV_BIN and os.path.exists(os.path.join(VENV_BIN, "aws"))):
        pytest.skip("the aws CLI (awscli in the dev extra) is not installed beside this Python")
    wheelhouse = artifacts.build_wheelhouse(REQUIREMENTS, artifacts.default_cache())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # `aws` beside this Python
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "PIP_CONFIG_FILE": os.devnull,  # no find-links or index from the machine's pip configuration
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # and any index attempt fails at once
        "PIP_NO_CACHE_DIR": "1",
    }
    s3 = boto3.client(
        "s3", endpoint_url=s3_server, region_name="eu-west-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    prefix = f"artifacts/wheelhouse/{artifacts.requirements_hash(REQUIREMENTS)}"
    s3.upload_file(str(REQUIREMENTS), BUCKET, f"{prefix}/requirements.txt")
    s3.upload_file(str(wheelhouse), BUCKET, f"{prefix}/{artifacts.WHEELHOUSE}")
    node = tmp_path / "node"
    venv.EnvBuilder(with_pip=False).create(node)  # a node's Python without pip: it comes from the lake
    env |= {"ORCHARD_BOOTSTRAP_PYTHON": str(node / "bin" / "python"), "ORCHARD_BOOTSTRAP_SUDO": ""}
    command = ["bash", str(SCRIPT), f"s3://{BUCKET}/{prefix}/requirements.txt",
               f"s3://{BUCKET}/{prefix}/{artifacts.WHEELHOUSE}"]  # fmt: skip

    started = time.monotonic()
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=900)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-3000:]
    pip = subprocess.run(
        [str(node / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True, check=True
    )
    assert pip.stdout.startswith(f"pip {artifacts.NODE_PIP.split('==')[1]} "), pip.stdout
    pins = [line.split("==")[0] for line in REQUIREMENTS.read_text().splitlines() if "==" in line]
    for name in pins:
        assert f"orchard bootstrap ok: {name} " in first.stdout, first.stdout
    print(f"bootstrap from the wheelhouse: {took:.0f} s")

    # Idempotent: a second run installs nothing and still passes its import checks.
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]

    # And the same install with the wheelhouse missing a wheel fails instead of reaching for PyPI.
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/empty.tar", Body=_empty_tar())
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    env["ORCHARD_BOOTSTRAP_PYTHON"] = str(fresh / "bin" / "python")
    empty = [*command[:3], f"s3://{BUCKET}/{prefix}/empty.tar"]
    failed = subprocess.run(empty, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert failed.returncode != 0
    assert "No matching distribution" in failed.stderr or "Could not find a version" in failed.stderr


def _empty_tar() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def test_wheelhouse_key_follows_the_requirements(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("numpy==2.4.6\n")
    b.write_text("numpy==2.4.5\n")
    assert artifacts.requirements_hash(a) != artifacts.requirements_hash(b)
    same = tmp_path / "elsewhere" / "requirements.txt"
    same.parent.mkdir()
    same.write_text("numpy==2.4.6\n")
    assert artifacts.requirements_hash(a) == artifacts.requirements_hash(same)  # the content, not the path
    assert sys.version_info[:2] == (3, 11)  # the wheelhouse is cp311 like the nodes (emr.NODE_PYTHON)


def test_graviton_nodes_get_a_wheelhouse_of_their_own(tmp_path):
    # No TensorFlow on the nodes: every pinned package has aarch64 wheels, so Graviton types work.
    arm = artifacts.build_wheelhouse(REQUIREMENTS, tmp_path, "AARCH64")
    x86 = artifacts.requirements_hash(REQUIREMENTS, "X86_64")
    assert artifacts.requirements_hash(REQUIREMENTS, "AARCH64") != x86
    with tarfile.open(arm) as archive:
        wheels = archive.getnames()
    onnxruntime = [w for w in wheels if w.startswith("onnxruntime-")]
    assert onnxruntime and all("aarch64" in w for w in onnxruntime), onnxruntime
    assert not [w for w in wheels if "x86_64" in w]
