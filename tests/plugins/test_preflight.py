"""The AWS preflight against moto: one passing set-up, then one test per problem it must name."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from orchard.aws import preflight
from orchard.config import Settings
from tests import iam

REGION = "eu-west-1"
BUCKET = "orchard-lake"


def settings(**env) -> Settings:
    return Settings.from_env(
        {"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": f"s3://{BUCKET}/prod", "ORCHARD_AWS_REGION": REGION, **env}
    )


@pytest.fixture
def aws(monkeypatch):
    """A moto account set up as the README says: encrypted bucket, default EMR roles."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [rule]})
        client = boto3.client("iam", region_name=REGION)
        for role in ("EMR_DefaultRole", "EMR_EC2_DefaultRole"):
            client.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
        client.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
        client.add_role_to_instance_profile(
            InstanceProfileName="EMR_EC2_DefaultRole", RoleName="EMR_EC2_DefaultRole"
        )
        yield boto3.session.Session(region_name=REGION)


def quotas_client(values: dict[str, float]):
    """Service Quotas answering GetServiceQuota for the EC2 vCPU quotas (moto has none for EC2):
    botocore's Stubber, which checks requests and responses against the service model."""
    from botocore.stub import Stubber

    client = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(client)
    for kind, value in values.items():
        code, title = preflight.QUOTAS[kind]
        quota = {"ServiceCode": "ec2", "QuotaCode": code, "QuotaName": title, "Value": value, "Unit": "None"}
        stub.add_response("get_service_quota", {"Quota": quota}, {"ServiceCode": "ec2", "QuotaCode": code})
    stub.activate()
    return client


def run(session, tmp_path, instance_type: str | None = None, quota: dict | None = None,
        core_instances: int | None = None, **env) -> list:  # fmt: skip
    quotas = quotas_client(quota or {"on-demand": 64.0, "spot": 64.0})

    def client(service):
        return quotas if service == "service-quotas" else session.client(service)

    return preflight.run_checks(settings(**env), client, instance_type, core_instances)


def problems(checks) -> list[str]:
    return [str(c) for c in preflight.problems(checks)]


@pytest.mark.backs("least-privilege IAM policy")
def test_a_complete_setup_passes_and_every_call_is_allowed_by_the_policy(aws, tmp_path, aws_calls):
    calls, ignored = aws_calls
    kms, ec2 = aws.client("kms"), aws.client("ec2")
    ignored += [kms, ec2]
    key = kms.create_key()["KeyMetadata"]
    node_role = f"arn:aws:iam::{iam.ACCOUNT}:role/EMR_EC2_DefaultRole"
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": node_role},
        "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
    }
    kms.put_key_policy(
        KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps({"Statement": [statement]})
    )
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]

    checks = run(aws, tmp_path, ORCHARD_KMS_KEY_ID=key["KeyId"], ORCHARD_EMR_SUBNET_ID=subnet)

    assert problems(checks) == []
    # bucket, its region, encryption, 2 roles, EMR's cleanup role, release, instance type, its
    # executors, vCPU quota, subnet, key, key use
    assert len(checks) == 13
    requests_made = iam.requests_for(calls)
    assert iam.refused(iam.airflow_policy(BUCKET, "prod", kms_key=key["KeyId"]), requests_made) == []


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_missing_bucket(aws, tmp_path):
    found = problems(run(aws, tmp_path, ORCHARD_LAKE="s3://no-such-lake/prod"))
    assert found == [
        "PROBLEM ORCHARD_LAKE=s3://no-such-lake/prod: "
        "bucket 'no-such-lake' does not exist: create it (docs/aws.md step 1)"
    ]


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_bucket_without_default_encryption(aws, tmp_path):
    aws.client("s3").delete_bucket_encryption(Bucket=BUCKET)
    (found,) = problems(run(aws, tmp_path))
    assert found.startswith(
        "PROBLEM ORCHARD_LAKE=s3://orchard-lake/prod encryption: bucket 'orchard-lake' has no default"
    )


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
@pytest.mark.parametrize(("location", "region"), [("eu-central-1", "eu-central-1"), (None, "us-east-1")])
def test_bucket_in_another_region(aws, tmp_path, location, region):
    s3 = aws.client("s3", region_name=region)
    config = {"CreateBucketConfiguration": {"LocationConstraint": location}} if location else {}
    s3.create_bucket(Bucket="lake-elsewhere", **config)
    s3.put_bucket_encryption(
        Bucket="lake-elsewhere",
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    found = problems(run(aws, tmp_path, ORCHARD_LAKE="s3://lake-elsewhere/prod"))
    assert found == [
        f"PROBLEM ORCHARD_AWS_REGION=eu-west-1: bucket 'lake-elsewhere' is in {region}: "
        f"set ORCHARD_AWS_REGION={region}, or use a bucket in eu-west-1"
    ]


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_emrs_cleanup_role_missing_on_a_fresh_account_is_named_with_its_command(aws, tmp_path):
    (line,) = [str(c) for c in run(aws, tmp_path) if c.name == "AWSServiceRoleForEMRCleanup"]
    assert line.startswith("ok      AWSServiceRoleForEMRCleanup: not there yet: EMR creates it")
    assert "aws iam create-service-linked-role --aws-service-name elasticmapreduce.amazonaws.com" in line
    aws.client("iam").create_role(
        RoleName="AWSServiceRoleForEMRCleanup",
        Path="/aws-service-role/elasticmapreduce.amazonaws.com/",
        AssumeRolePolicyDocument="{}",
    )
    (line,) = [str(c) for c in run(aws, tmp_path) if c.name == "AWSServiceRoleForEMRCleanup"]
    assert line == "ok      AWSServiceRoleForEMRCleanup: EMR's service-linked role exists"


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_missing_roles_are_both_reported(aws, tmp_path):
    found = problems(
        run(aws, tmp_path, ORCHARD_EMR_SERVICE_ROLE="NoRole", ORCHARD_EMR_INSTANCE_PROFILE="NoProfile")
    )
    assert found == [
        "PROBLEM ORCHARD_EMR_SERVICE_ROLE=NoRole: role does not exist: run `aws emr create-default-roles` "
        "or set ORCHARD_EMR_SERVICE_ROLE to your role",
        "PROBLEM ORCHARD_EMR_INSTANCE_PROFILE=NoProfile: instance profile does not exist: run "
        "`aws emr create-default-roles` or set ORCHARD_EMR_INSTANCE_PROFILE to your profile",
    ]


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_unknown_release(aws, tmp_path):
    found = problems(run(aws, tmp_path, ORCHARD_EMR_RELEASE="emr-9.99.0"))
    assert found[0].startswith(
        "PROBLEM ORCHARD_EMR_RELEASE=emr-9.99.0: release not available in eu-west-1: use one of emr-7"
    )
    assert "not checked" in found[1]


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_unsupported_instance_type(aws, tmp_path):
    (found,) = problems(run(aws, tmp_path, ORCHARD_EMR_INSTANCE_TYPE="m5.nonexistent"))
    assert found.startswith("PROBLEM ORCHARD_EMR_INSTANCE_TYPE=m5.nonexistent: not supported by emr-7.14.0")


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_missing_subnet(aws, tmp_path):
    (found,) = problems(run(aws, tmp_path, ORCHARD_EMR_SUBNET_ID="subnet-0123456789abcdef0"))
    assert found.startswith(
        "PROBLEM ORCHARD_EMR_SUBNET_ID=subnet-0123456789abcdef0: subnet does not exist in eu-west-1"
    )


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_missing_disabled_and_unusable_kms_keys(aws, tmp_path):
    kms = aws.client("kms")
    (found,) = problems(run(aws, tmp_path, ORCHARD_KMS_KEY_ID="0a1b2c3d-0000-4000-8000-000000000000"))
    assert "key does not exist in eu-west-1" in found
    disabled = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=disabled)
    (found,) = problems(run(aws, tmp_path, ORCHARD_KMS_KEY_ID=disabled))
    assert found.endswith("key is Disabled: enable it (aws kms enable-key)")
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    stranger = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/x"},
        "Action": "kms:*",
    }
    kms.put_key_policy(KeyId=other, PolicyName="default", Policy=json.dumps({"Statement": [stranger]}))
    (found,) = problems(run(aws, tmp_path, ORCHARD_KMS_KEY_ID=other))
    assert "key policy does not let arn:aws:iam::123456789012:role/EMR_EC2_DefaultRole use the key" in found


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_every_problem_is_reported_in_one_run(aws, tmp_path):
    found = problems(
        run(
            aws,
            tmp_path,
            instance_type="m5.nonexistent",
            ORCHARD_LAKE="s3://no-such-lake/prod",
            ORCHARD_EMR_SERVICE_ROLE="NoRole",
            ORCHARD_EMR_SUBNET_ID="subnet-0123456789abcdef0",
            ORCHARD_KMS_KEY_ID="0a1b2c3d-0000-4000-8000-000000000000",
        )
    )
    assert [f.split(":")[0] for f in found] == [
        "PROBLEM ORCHARD_LAKE=s3",
        "PROBLEM ORCHARD_EMR_SERVICE_ROLE=NoRole",
        "PROBLEM ORCHARD_EMR_INSTANCE_TYPE=m5.nonexistent",
        "PROBLEM ORCHARD_EMR_SUBNET_ID=subnet-0123456789abcdef0",
        "PROBLEM ORCHARD_KMS_KEY_ID=0a1b2c3d-0000-4000-8000-000000000000",
    ]


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_command_line_exits_non_zero_with_the_problems(aws, monkeypatch, capsys):
    monkeypatch.setenv("ORCHARD_TARGET", "emr")
    monkeypatch.setenv("ORCHARD_LAKE", "s3://no-such-lake/x")
    monkeypatch.setenv("ORCHARD_AWS_REGION", REGION)
    assert preflight.main([]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM ORCHARD_LAKE=s3://no-such-lake/x" in out
    assert out.rstrip().endswith("problem(s)")
    monkeypatch.setenv("ORCHARD_LAKE", f"s3://{BUCKET}/prod")
    real = preflight.clients.aws_client
    quotas = quotas_client({"on-demand": 64.0})  # moto has no EC2 quotas
    monkeypatch.setattr(
        preflight.clients,
        "aws_client",
        lambda service, *a, **k: quotas if service == "service-quotas" else real(service, *a, **k),
    )
    assert preflight.main(["--instance-type", "m5.xlarge"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("preflight passed: ready for ORCHARD_TARGET=emr")


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_sse_s3_writes_to_a_bucket_whose_default_is_sse_kms_are_a_problem(aws, tmp_path):
    key = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}
    aws.client("s3").put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [rule]})
    (found,) = problems(run(aws, tmp_path, ORCHARD_S3_ENCRYPTION="sse-s3"))
    assert found.startswith(
        "PROBLEM ORCHARD_LAKE=s3://orchard-lake/prod encryption: default encryption aws:kms"
    )
    assert found.endswith(
        "but ORCHARD_S3_ENCRYPTION=sse-s3 sends AES256, which an SSE-KMS bucket policy denies: unset "
        "ORCHARD_S3_ENCRYPTION (writes then take the bucket's default) or set ORCHARD_KMS_KEY_ID"
    )
    # With no setting, writes send no header and take the bucket's SSE-KMS default.
    (line,) = [str(c) for c in run(aws, tmp_path) if c.name.endswith("encryption")]
    assert line.endswith("writes send no header and take it")


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_a_cluster_beyond_the_vcpu_quota_left_is_a_problem(aws, tmp_path, aws_calls):
    """A fresh account's On-Demand quota (5 vCPUs here) and what already runs count: the default
    cluster (3 x m5.xlarge, 12 vCPUs) does not fit; with Spot core nodes, each quota is checked."""
    calls, ignored = aws_calls
    ec2 = aws.client("ec2")
    ignored.append(ec2)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="m5.2xlarge")  # 16 vCPUs running
    found = problems(run(aws, tmp_path, quota={"on-demand": 24.0}))
    assert found == [
        "PROBLEM ORCHARD_EMR_CORE_INSTANCES=2 quota: 12 on-demand vCPUs needed, 8 left of the quota (24, 16 "
        "running): request more of 'Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' "
        "(L-1216C47A) in Service Quotas, or fewer or smaller nodes"
    ]
    assert problems(run(aws, tmp_path, quota={"on-demand": 28.0})) == []  # 12 of 12 left: it fits
    spot = run(aws, tmp_path, quota={"on-demand": 24.0, "spot": 4.0}, ORCHARD_EMR_CORE_SPOT="true")
    assert [str(c) for c in preflight.problems(spot)] == [
        "PROBLEM ORCHARD_EMR_CORE_INSTANCES=2 quota: 8 spot vCPUs needed, 4 left of the quota (4, 0 "
        "running): request more of 'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests' "
        "(L-34B43A08) in Service Quotas, or fewer or smaller nodes"
    ]
    assert any(c.name.endswith("quota") and c.ok and "4 on-demand vCPUs needed" in c.detail for c in spot)
    # The calls it made are allowed by the shipped policy.
    assert iam.refused(iam.airflow_policy(BUCKET, "prod"), iam.requests_for(calls)) == []


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
@pytest.mark.parametrize("decision", ["allowed", "implicitDeny"])
def test_a_key_left_to_iam_is_checked_against_the_nodes_role(aws, tmp_path, decision, aws_calls):
    """A key whose policy delegates to IAM (the account root, kms:*): IAM's policy simulator decides
    whether the nodes' role may use it (moto has no simulator: botocore's Stubber answers)."""
    from botocore.stub import Stubber

    calls, ignored = aws_calls
    kms = aws.client("kms")
    ignored.append(kms)
    key = kms.create_key()["KeyMetadata"]  # moto's default key policy: root, kms:*
    node_role = f"arn:aws:iam::{iam.ACCOUNT}:role/EMR_EC2_DefaultRole"
    simulator = boto3.client("iam", region_name=REGION)
    stub = Stubber(simulator)
    results = [{"EvalActionName": a, "EvalDecision": decision} for a in preflight.KMS_NODE_ACTIONS]
    stub.add_response(
        "simulate_principal_policy",
        {"EvaluationResults": results},
        {
            "PolicySourceArn": node_role,
            "ActionNames": list(preflight.KMS_NODE_ACTIONS),
            "ResourceArns": [key["Arn"]],
        },
    )
    stub.activate()
    iam_clients = iter([aws.client("iam"), simulator])  # the roles' check, then the key's
    quotas = quotas_client({"on-demand": 64.0})

    def client(service):
        if service == "iam":
            return next(iam_clients)
        return quotas if service == "service-quotas" else aws.client(service)

    checks = preflight.run_checks(settings(ORCHARD_KMS_KEY_ID=key["KeyId"]), client)
    (line,) = [str(c) for c in checks if c.name.endswith("nodes")]
    if decision == "allowed":
        allowed = "kms:GenerateDataKey and kms:Decrypt"
        assert line.endswith(f"key policy delegates to IAM, and {node_role}'s policies allow {allowed}")
    else:
        assert line.startswith("PROBLEM ORCHARD_KMS_KEY_ID=")
        assert line.endswith(
            f"{node_role}'s policies do not allow kms:GenerateDataKey and kms:Decrypt on the key: add them, "
            "for this key only, to that role (docs/aws.md step 2)"
        )
    stub.assert_no_pending_responses()
    assert (
        iam.refused(iam.airflow_policy(BUCKET, "prod", kms_key=key["KeyId"]), iam.requests_for(calls)) == []
    )


@pytest.mark.backs(
    "an incomplete AWS set-up (bucket, encryption, roles, release, instance type, subnet, KMS key)"
)
def test_an_instance_type_too_small_for_an_executor_is_refused(aws, tmp_path):
    """c4.large: 2 vCPU and 3.75 GB (EMR's ListSupportedInstanceTypes, as moto answers it)."""
    (found,) = problems(run(aws, tmp_path, instance_type="c4.large"))
    assert found == (
        "PROBLEM ORCHARD_EMR_INSTANCE_TYPE=c4.large executors: 2 vCPU, 3.75 GB (2640 MB for YARN) "
        "cannot host one executor (a 2 GiB heap, its Python workers and the application master): "
        "pick a type with more memory"
    )
    (line,) = [str(c) for c in run(aws, tmp_path) if c.name.endswith("executors")]
    assert line == (
        "ok      ORCHARD_EMR_INSTANCE_TYPE=m5.xlarge executors: 4 task slots of 4 vCPU, heap 4096m, "
        "overhead 4g in 12288 MB of YARN memory"
    )
