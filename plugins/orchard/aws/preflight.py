"""Preflight for the emr target: everything a run needs from AWS, checked before anything costs money.

`python -m orchard preflight` (standard AWS credential chain) or the DAG's `check_aws` task (the
Airflow connection). Every check runs and every problem is reported, each as one line naming the
setting and the fix.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from orchard import clients
from orchard.aws import sizing as executors
from orchard.config import Settings
from orchard.uris import split_uri

if TYPE_CHECKING:
    from types_boto3_ec2 import EC2Client
    from types_boto3_emr import EMRClient
    from types_boto3_emr.type_defs import SupportedInstanceTypeTypeDef
    from types_boto3_iam import IAMClient
    from types_boto3_kms import KMSClient
    from types_boto3_s3 import S3Client

KMS_NODE_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


@dataclass(frozen=True)
class Check:
    """One line of the preflight: what was checked, and the problem (with its fix) if any."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok     ' if self.ok else 'PROBLEM'} {self.name}: {self.detail}"


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _wildcard(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.IGNORECASE) is not None


def key_policy_allows(policy: Mapping[str, Any], principal_arn: str, actions: Iterable[str]) -> bool:
    """Whether a key policy's Allow statements name `principal_arn` for every action (no conditions)."""
    statements = policy.get("Statement", [])
    statements = statements if isinstance(statements, list) else [statements]

    def names(statement: Mapping[str, Any]) -> list[str]:
        principal = statement.get("Principal", {})
        if principal == "*":
            return ["*"]
        aws = principal.get("AWS", []) if isinstance(principal, dict) else []
        return aws if isinstance(aws, list) else [aws]

    def allows(action: str) -> bool:
        for st in statements:
            if st.get("Effect") != "Allow" or "Condition" in st:
                continue
            acts = st.get("Action", [])
            acts = acts if isinstance(acts, list) else [acts]
            if any(_wildcard(a, action) for a in acts) and any(n in {"*", principal_arn} for n in names(st)):
                return True
        return False

    return all(allows(a) for a in actions)


def check_lake(s3: S3Client, settings: Settings) -> list[Check]:
    """The bucket answers a listing of the lake prefix with these credentials; its default encryption."""
    bucket, prefix = split_uri(settings.lake)
    setting = f"ORCHARD_LAKE={settings.lake}"
    try:
        # A prefix listing, not HeadBucket: HeadBucket is authorized as s3:ListBucket without an
        # s3:prefix, which the least-privilege policy (listing scoped to the lake prefix) refuses.
        s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except ClientError as exc:
        if _code(exc) in {"NoSuchBucket", "404"}:
            return [
                Check(setting, False, f"bucket {bucket!r} does not exist: create it (docs/aws.md step 1)")
            ]
        if _code(exc) in {"AccessDenied", "403"}:
            return [
                Check(
                    setting,
                    False,
                    f"listing s3://{bucket}/{prefix} is denied: attach "
                    "plugins/orchard/aws/airflow-iam-policy.json to Airflow's credentials",
                )
            ]
        return [Check(setting, False, f"bucket {bucket!r} cannot be reached: {_code(exc) or exc}")]
    checks = [Check(setting, True, f"bucket {bucket!r} is reachable with these credentials")]
    checks.append(check_bucket_region(s3, bucket, settings.region))
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        default = rules[0]["ApplyServerSideEncryptionByDefault"]
        algorithm = default["SSEAlgorithm"]
        detail = f"default encryption {algorithm}"
        if algorithm.startswith("aws:kms"):
            detail += f" (key {default.get('KMSMasterKeyID', 'aws/s3')}, bucket key "
            detail += f"{'on' if rules[0].get('BucketKeyEnabled') else 'off'})"
        checks.append(encryption_choice(f"{setting} encryption", detail, algorithm, settings))
    except ClientError as exc:
        if _code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
            checks.append(
                Check(
                    f"{setting} encryption",
                    False,
                    f"bucket {bucket!r} has no default "
                    "encryption: set it (docs/aws.md step 1, put-bucket-encryption)",
                )
            )
        else:
            detail = f"cannot read the default encryption of {bucket!r}: {_code(exc)}"
            checks.append(Check(f"{setting} encryption", False, detail))
    return checks


def encryption_choice(name: str, detail: str, algorithm: str, settings: Settings) -> Check:
    """The writes' encryption (Settings.encryption) against the bucket's default: SSE-S3 headers on a
    bucket whose default is SSE-KMS are what an SSE-KMS bucket policy (lake-bucket-policy.json) denies."""
    sent = settings.encryption.get("ServerSideEncryption")
    if sent == "AES256" and algorithm.startswith("aws:kms"):
        return Check(
            name,
            False,
            f"{detail}, but ORCHARD_S3_ENCRYPTION=sse-s3 sends AES256, which an SSE-KMS bucket policy "
            "denies: unset ORCHARD_S3_ENCRYPTION (writes then take the bucket's default) or set "
            "ORCHARD_KMS_KEY_ID",
        )
    if sent is None:
        return Check(name, True, f"{detail}; writes send no header and take it")
    return Check(name, True, f"{detail}; writes ask for {sent}")


def bucket_region(location: str | None) -> str:
    """The region of a GetBucketLocation answer: None is us-east-1, the legacy "EU" is eu-west-1
    (Amazon S3 API Reference, GetBucketLocation)."""
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location or "us-east-1")


def check_bucket_region(s3: S3Client, bucket: str, region: str) -> Check:
    """The bucket is in the region the cluster runs in (and the data stays where the user put it)."""
    setting = f"ORCHARD_AWS_REGION={region}"
    try:
        where = bucket_region(s3.get_bucket_location(Bucket=bucket).get("LocationConstraint"))
    except ClientError as exc:
        return Check(setting, False, f"cannot read the region of bucket {bucket!r} ({_code(exc)})")
    if where != region:
        return Check(
            setting,
            False,
            f"bucket {bucket!r} is in {where}: set ORCHARD_AWS_REGION={where}, or use a bucket in {region}",
        )
    return Check(setting, True, f"bucket {bucket!r} is in {region}, where the cluster runs")


def check_roles(iam: IAMClient, settings: Settings) -> tuple[list[Check], str | None]:
    """The service role and the instance profile exist; returns the profile's role ARN too."""
    checks = []
    role_setting = f"ORCHARD_EMR_SERVICE_ROLE={settings.emr_service_role}"
    try:
        iam.get_role(RoleName=settings.emr_service_role)
        checks.append(Check(role_setting, True, "service role exists"))
    except ClientError as exc:
        fix = "run `aws emr create-default-roles` or set ORCHARD_EMR_SERVICE_ROLE to your role"
        what = "does not exist" if _code(exc) == "NoSuchEntity" else f"cannot be read ({_code(exc)})"
        checks.append(Check(role_setting, False, f"role {what}: {fix}"))
    profile_setting = f"ORCHARD_EMR_INSTANCE_PROFILE={settings.emr_instance_profile}"
    role_arn = None
    try:
        profile = iam.get_instance_profile(InstanceProfileName=settings.emr_instance_profile)[
            "InstanceProfile"
        ]
        roles = profile.get("Roles", [])
        if roles:
            role_arn = roles[0]["Arn"]
            checks.append(
                Check(profile_setting, True, f"instance profile exists (role {roles[0]['RoleName']})")
            )
        else:
            checks.append(
                Check(
                    profile_setting,
                    False,
                    "instance profile has no role: add one (aws iam add-role-to-instance-profile)",
                )
            )
    except ClientError as exc:
        fix = "run `aws emr create-default-roles` or set ORCHARD_EMR_INSTANCE_PROFILE to your profile"
        what = "does not exist" if _code(exc) == "NoSuchEntity" else f"cannot be read ({_code(exc)})"
        checks.append(Check(profile_setting, False, f"instance profile {what}: {fix}"))
    checks.append(check_cleanup_role(iam))
    return checks, role_arn


# EMR's service-linked role: made at an account's first cluster, with the caller's permissions
# (EMR Management Guide, "Using service-linked roles for Amazon EMR for cleanup").
CLEANUP_ROLE = "AWSServiceRoleForEMRCleanup"
CREATE_CLEANUP_ROLE = "aws iam create-service-linked-role --aws-service-name elasticmapreduce.amazonaws.com"


def check_cleanup_role(iam: IAMClient) -> Check:
    """EMR's cleanup role exists, or the first cluster creates it (the policy allows that)."""
    try:
        iam.get_role(RoleName=CLEANUP_ROLE)
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            return Check(CLEANUP_ROLE, False, f"cannot be read ({_code(exc)}): allow iam:GetRole on it")
        return Check(
            CLEANUP_ROLE,
            True,
            "not there yet: EMR creates it at this account's first cluster, with the policy's "
            "LetEmrCreateItsCleanupRole statement; without that statement, an admin runs "
            f"`{CREATE_CLEANUP_ROLE}`",
        )
    return Check(CLEANUP_ROLE, True, "EMR's service-linked role exists")


def supported_instance_types(emr: EMRClient, release: str) -> dict[str, SupportedInstanceTypeTypeDef]:
    """Instance type -> EMR's description of it (Architecture among others), for one release."""
    types: dict[str, SupportedInstanceTypeTypeDef] = {}
    token = None
    while True:
        page = (
            emr.list_supported_instance_types(ReleaseLabel=release, Marker=token)
            if token
            else emr.list_supported_instance_types(ReleaseLabel=release)
        )
        types.update({t["Type"]: t for t in page.get("SupportedInstanceTypes", [])})
        token = page.get("Marker")
        if not token:
            return types


def check_release_and_instance(
    emr: EMRClient, settings: Settings, instance_type: str
) -> tuple[list[Check], SupportedInstanceTypeTypeDef | None]:
    """The release exists in the region; the instance type is supported by it (and EMR's description
    of it: vCPUs, memory, architecture)."""
    release = settings.emr_release
    setting = f"ORCHARD_EMR_RELEASE={release}"
    labels, token = [], None
    while True:
        page = emr.list_release_labels(NextToken=token) if token else emr.list_release_labels()
        labels += page.get("ReleaseLabels", [])
        token = page.get("NextToken")
        if not token:
            break
    type_setting = f"ORCHARD_EMR_INSTANCE_TYPE={instance_type}"
    if release not in labels:
        newest = ", ".join(sorted((lb for lb in labels if lb.startswith("emr-7")), reverse=True)[:3])
        return [
            Check(setting, False, f"release not available in {settings.region}: use one of {newest}"),
            Check(type_setting, False, "not checked: the release label is not available"),
        ], None
    checks = [Check(setting, True, f"release exists in {settings.region}")]
    types = supported_instance_types(emr, release)
    if instance_type not in types:
        checks.append(
            Check(
                type_setting,
                False,
                f"not supported by {release} in {settings.region}: "
                "pick another type (or the instance_type Param)",
            )
        )
        return checks, None
    described = types[instance_type]
    arch = described.get("Architecture", "X86_64").lower()
    checks.append(
        Check(type_setting, True, f"supported by {release}, {arch} (its wheelhouse is built for it)")
    )
    checks.append(check_executors(instance_type, described))
    return checks, described


def check_executors(instance_type: str, described: SupportedInstanceTypeTypeDef) -> Check:
    """A node of the type can host an executor of the steps (sizing.executor_sizing), before any cost."""
    name = f"ORCHARD_EMR_INSTANCE_TYPE={instance_type} executors"
    vcpu, memory_gb = int(described.get("VCPU", 0)), float(described.get("MemoryGB", 0.0))
    yarn_mb = executors.yarn_memory_mb(instance_type, memory_gb)
    sizing = executors.executor_sizing(vcpu, yarn_mb)
    if sizing is None:
        return Check(
            name,
            False,
            f"{vcpu} vCPU, {memory_gb:g} GB ({yarn_mb} MB for YARN) cannot host one executor (a 2 GiB heap, "
            "its Python workers and the application master): pick a type with more memory",
        )
    return Check(
        name,
        True,
        f"{sizing['spark.executor.cores']} task slots of {vcpu} vCPU, "
        f"heap {sizing['spark.executor.memory']}, overhead {sizing['spark.executor.memoryOverhead']} "
        f"in {yarn_mb} MB of YARN memory",
    )


# EC2's vCPU quotas for the standard families (A, C, D, H, I, M, R, T, Z), On-Demand and Spot, in
# vCPUs (Service Quotas; Amazon EC2 User Guide, "On-Demand Instance quotas" and "Spot Instance quotas").
STANDARD_FAMILIES = tuple("acdhimrtz")
QUOTAS = {
    "on-demand": ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    "spot": ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
}


def running_standard_vcpus(ec2: EC2Client) -> dict[str, int]:
    """vCPUs of the standard-family instances running or pending in the region, On-Demand and Spot."""
    counts: dict[tuple[str, str], int] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                kind = "spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand"
                key = (kind, instance["InstanceType"])
                counts[key] = counts.get(key, 0) + 1
    types = sorted({t for _, t in counts if t.startswith(STANDARD_FAMILIES)})
    vcpus: dict[str, int] = {}
    for i in range(0, len(types), 100):  # DescribeInstanceTypes takes at most 100 types
        for described in ec2.describe_instance_types(InstanceTypes=types[i : i + 100])["InstanceTypes"]:  # type: ignore[arg-type]
            vcpus[described["InstanceType"]] = described["VCpuInfo"]["DefaultVCpus"]
    used = {"on-demand": 0, "spot": 0}
    for (kind, itype), count in counts.items():
        used[kind] += vcpus.get(itype, 0) * count
    return used


def quota_left(quotas: Any, ec2: EC2Client, kinds: Iterable[str]) -> dict[str, tuple[int, int] | ClientError]:
    """For each market ('on-demand', 'spot'): (the standard families' vCPU quota, vCPUs running in
    the region), or the error that kept the quota from being read."""
    used = running_standard_vcpus(ec2)
    found: dict[str, tuple[int, int] | ClientError] = {}
    for kind in kinds:
        try:
            value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=QUOTAS[kind][0])["Quota"]["Value"]
            found[kind] = (int(value), used[kind])
        except ClientError as exc:
            found[kind] = exc
    return found


def check_quota(
    quotas: Any, ec2: EC2Client, settings: Settings, instance_type: str, vcpu: int | None, core_instances: int
) -> list[Check]:
    """The cluster's vCPUs fit the EC2 quota left (the quota minus what already runs in the region)."""
    name = f"ORCHARD_EMR_CORE_INSTANCES={core_instances} quota"
    if vcpu is None:
        return []  # the instance type check has said why
    if not instance_type.startswith(STANDARD_FAMILIES):
        return [Check(name, True, f"not checked: {instance_type} is not in a standard family's quota")]
    needs = executors.vcpus_needed(vcpu, core_instances, settings.emr_core_spot)
    found = quota_left(quotas, ec2, [kind for kind, need in needs.items() if need])
    checks = []
    for kind, quota in found.items():
        code, title = QUOTAS[kind]
        if isinstance(quota, ClientError):
            checks.append(Check(name, False, f"cannot read the {kind} vCPU quota {code} ({_code(quota)})"))
            continue
        limit, used = quota
        need, left = needs[kind], limit - used
        detail = f"{need} {kind} vCPUs needed, {left} left of the quota ({limit}, {used} running)"
        if need > left:
            fix = f"request more of '{title}' ({code}) in Service Quotas, or fewer or smaller nodes"
            checks.append(Check(name, False, f"{detail}: {fix}"))
        else:
            checks.append(Check(name, True, detail))
    return checks


def check_subnet(ec2: EC2Client, settings: Settings) -> list[Check]:
    """The subnet exists, when one is set."""
    if not settings.emr_subnet_id:
        return []
    setting = f"ORCHARD_EMR_SUBNET_ID={settings.emr_subnet_id}"
    try:
        subnet = ec2.describe_subnets(SubnetIds=[settings.emr_subnet_id])["Subnets"][0]
    except ClientError as exc:
        what = (
            "does not exist" if _code(exc).startswith("InvalidSubnetID") else f"cannot be read ({_code(exc)})"
        )
        return [
            Check(
                setting, False, f"subnet {what} in {settings.region}: set an existing subnet id or unset it"
            )
        ]
    return [
        Check(
            setting,
            True,
            f"subnet exists ({subnet.get('VpcId')}, {subnet.get('AvailabilityZone')}); "
            "without NAT it needs an S3 gateway endpoint",
        )
    ]


def check_kms(
    kms: KMSClient, settings: Settings, node_role_arn: str | None, iam: IAMClient | None = None
) -> list[Check]:
    """The key exists, is enabled for encryption, and lets the cluster's nodes use it."""
    if not settings.kms_key_id:
        return []
    setting = f"ORCHARD_KMS_KEY_ID={settings.kms_key_id}"
    try:
        meta = kms.describe_key(KeyId=settings.kms_key_id)["KeyMetadata"]
    except ClientError as exc:
        what = "does not exist" if _code(exc) == "NotFoundException" else f"cannot be read ({_code(exc)})"
        return [Check(setting, False, f"key {what} in {settings.region}: set a key id/ARN of this region")]
    usage = (
        meta.get("KeyState"),
        meta.get("KeyUsage", "ENCRYPT_DECRYPT"),
        meta.get("KeySpec", "SYMMETRIC_DEFAULT"),
    )
    if usage[0] != "Enabled":
        return [Check(setting, False, f"key is {usage[0]}: enable it (aws kms enable-key)")]
    if usage[1:] != ("ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT"):
        return [Check(setting, False, "S3 needs a symmetric ENCRYPT_DECRYPT key: use another key")]
    checks = [Check(setting, True, "key is enabled for encryption")]
    if node_role_arn is None:
        return [*checks, Check(f"{setting} nodes", False, "not checked: the instance profile has no role")]
    return [*checks, _node_key_access(kms, setting, meta, node_role_arn, iam)]


def _node_key_access(
    kms: KMSClient, setting: str, meta: Mapping[str, Any], node_role_arn: str, iam: IAMClient | None = None
) -> Check:
    """Whether the nodes' role may encrypt and decrypt with the key: the key policy names it, or the
    key policy delegates to IAM and the role's IAM policies allow it (IAM's policy simulator)."""
    name = f"{setting} nodes"
    try:
        policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    except ClientError as exc:
        return Check(name, False, f"cannot read the key policy ({_code(exc)})")
    if key_policy_allows(policy, node_role_arn, KMS_NODE_ACTIONS):
        return Check(name, True, f"key policy lets {node_role_arn} encrypt and decrypt")
    root = f"arn:aws:iam::{meta.get('AWSAccountId', '')}:root"
    if key_policy_allows(policy, root, ("kms:*",)) or key_policy_allows(policy, root, KMS_NODE_ACTIONS):
        return _role_may_use_key(iam, name, node_role_arn, meta.get("Arn") or meta["KeyId"])
    return Check(
        name,
        False,
        f"key policy does not let {node_role_arn} use the key: allow it "
        f"{' and '.join(KMS_NODE_ACTIONS)} (docs/aws.md step 2)",
    )


def _role_may_use_key(iam: IAMClient | None, name: str, role_arn: str, key_arn: str) -> Check:
    """The key policy leaves the nodes' role to IAM: ask IAM's policy simulator whether the role's
    policies allow the key's use (without it, the nodes cannot read an SSE-KMS bootstrap script and
    the cluster ends TERMINATED_WITH_ERRORS before any step)."""
    actions = " and ".join(KMS_NODE_ACTIONS)
    if iam is None:
        return Check(name, True, f"key policy delegates to IAM: {role_arn} needs {actions} on the key")
    try:
        results = iam.simulate_principal_policy(
            PolicySourceArn=role_arn, ActionNames=list(KMS_NODE_ACTIONS), ResourceArns=[key_arn]
        )["EvaluationResults"]
    except ClientError as exc:
        return Check(
            name,
            False,
            f"cannot simulate {role_arn}'s policies ({_code(exc)}): allow iam:SimulatePrincipalPolicy on it",
        )
    denied = [r["EvalActionName"] for r in results if r["EvalDecision"] != "allowed"]
    if denied:
        return Check(
            name,
            False,
            f"key policy delegates to IAM, and {role_arn}'s policies do not allow {' and '.join(denied)} on "
            "the key: add them, for this key only, to that role (docs/aws.md step 2)",
        )
    return Check(name, True, f"key policy delegates to IAM, and {role_arn}'s policies allow {actions}")


def run_checks(
    settings: Settings,
    client: Callable[[clients.Service], Any],
    instance_type: str | None = None,
    core_instances: int | None = None,
) -> list[Check]:
    """Every check, in the order a user sets things up; `client(service)` gives a boto3 client."""
    instance_type = instance_type or settings.emr_instance_type
    core_instances = settings.emr_core_instances if core_instances is None else core_instances
    checks = check_lake(client("s3"), settings)
    role_checks, node_role = check_roles(client("iam"), settings)
    checks += role_checks
    release_checks, described = check_release_and_instance(client("emr"), settings, instance_type)
    checks += release_checks
    vcpu = described.get("VCPU") if described else None
    checks += check_quota(
        client("service-quotas"), client("ec2"), settings, instance_type, vcpu, core_instances
    )
    checks += check_subnet(client("ec2"), settings)
    checks += check_kms(client("kms"), settings, node_role, client("iam"))
    return checks


def problems(checks: Iterable[Check]) -> list[Check]:
    """The failed checks."""
    return [c for c in checks if not c.ok]


def main(argv: list[str] | None = None) -> int:
    """`python -m orchard preflight`: print every check (standard AWS chain); exit 1 when any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m orchard preflight", description="Check the AWS set-up of the emr target before a run"
    )
    parser.add_argument("--instance-type", help="instance type to check (default ORCHARD_EMR_INSTANCE_TYPE)")
    parser.add_argument(
        "--core-instances",
        type=int,
        help="core nodes to check the quota for (default ORCHARD_EMR_CORE_INSTANCES)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if not settings.lake_on_s3:
        print(f"PROBLEM ORCHARD_LAKE={settings.lake}: the emr target needs s3://bucket/prefix")
        return 1
    s3, _ = clients.s3_access(settings.region, settings.encryption, endpoint_url=settings.s3_endpoint)

    def client(service: clients.Service) -> Any:
        return s3 if service == "s3" else clients.aws_client(service, settings.region)

    checks = run_checks(settings, client, args.instance_type, args.core_instances)
    for check in checks:
        print(check)
    failed = problems(checks)
    print(f"{len(failed)} problem(s)" if failed else "preflight passed: ready for ORCHARD_TARGET=emr")
    return 1 if failed else 0
