"""The AWS account the emr target meets in the tests: moto's threaded server, a lake bucket, EMR's roles.

The `moto_server` fixture (tests/conftest.py) starts the server and prepares the account with
these; the tests read moto's backend directly with `clusters()`.
"""

from __future__ import annotations

import secrets

from orchard.aws import staging as artifacts
from tests.conftest import ROOT

REGION = "eu-west-1"
BUCKET = "orchard-test-lake"
LAKE = f"s3://{BUCKET}/lake"
WHEELHOUSE_KEY = (
    f"lake/artifacts/wheelhouse/{artifacts.requirements_hash(ROOT / 'bootstrap' / 'requirements.txt')}"
    f"/{artifacts.WHEELHOUSE}"
)
# Credentials of the environment (the AWS chain) and of the Airflow connection, each unique so that
# the tests can look for them in every log.
SECRETS = (f"env-secret-{secrets.token_hex(12)}", f"conn-secret-{secrets.token_hex(12)}")


def create_default_roles(iam) -> None:
    """What `aws emr create-default-roles` creates: the service role and the instance profile."""
    for role in ("EMR_DefaultRole", "EMR_EC2_DefaultRole"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    iam.add_role_to_instance_profile(
        InstanceProfileName="EMR_EC2_DefaultRole", RoleName="EMR_EC2_DefaultRole"
    )


def clusters() -> dict:
    """Every cluster moto holds (its server files EMR calls to an endpoint_url under us-east-1)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    return {
        cid: c for backend in emr_backends[DEFAULT_ACCOUNT_ID].values() for cid, c in backend.clusters.items()
    }
