"""Per-request IAM checks: what each recorded AWS call asks of IAM, and whether a policy allows it.

moto checks that an action name exists; AWS evaluates the resource ARN and the request's condition
keys as well. This module maps each call a run makes to the authorization requests AWS makes for
it (action, resource ARN, condition keys) and evaluates them against a policy document.

Hand-written because no maintained Python evaluator works offline: `aws-why` and `iam-ape` on PyPI
need an AWS account (iam:SimulatePrincipalPolicy, GetAccountAuthorizationDetails), `policyuniverse`
only parses, and the offline simulator that exists (`@cloud-copilot/iam-simulate`) is a Node library.
It implements what Orchard's policies use: Allow and Deny statements, Action/Resource wildcards,
and the StringEquals/StringNotEquals/StringLike/ArnLike/ArnEquals/Null operators; a key the request
does not carry makes a positive operator false and a negated one true, as AWS documents
("IAM JSON policy elements: Condition operators",
/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).

It refuses a statement that conditions an action on a key the action does not support: the
Service Authorization Reference lists, per action and resource type, the keys it supports; the
machine-readable copy is the IAM definition bundled with parliament. With such a key, AWS either
never matches the statement or never includes the key, so what a test passed on is not what AWS does.
Global keys (aws:SourceIp, aws:SecureTransport, ...) apply to every action; the tag keys
(aws:RequestTag/*, aws:ResourceTag/*, aws:TagKeys) only where the definition lists them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"  # moto's default account
# Service-linked roles live under a path of their service: part of their ARN.
SERVICE_ROLE_PATHS = {"AWSServiceRoleForEMRCleanup": "aws-service-role/elasticmapreduce.amazonaws.com/"}


@dataclass(frozen=True)
class Request:
    """One authorization request: an IAM action on a resource, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)
    call: str = ""  # the API call it came from, for messages

    def __str__(self) -> str:
        keys = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items())) or "no condition keys"
        return f"{self.call}: {self.action} on {self.resource} ({keys})"


def load_policy(path: Path, substitutions: Mapping[str, str]) -> dict:
    """A policy document with its placeholders (LAKE_BUCKET, ACCOUNT_ID, ...) filled in."""
    text = path.read_text(encoding="utf-8")
    for placeholder, value in substitutions.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcards: * any run of characters, ? one character (no character classes)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.IGNORECASE if ignore_case else 0) is not None


OPERATORS = {
    "Bool": (lambda pattern, value: pattern.lower() == value.lower(), False),
    "StringEquals": (lambda pattern, value: pattern == value, False),
    "StringLike": (_wildcard, False),
    "ArnEquals": (lambda pattern, value: pattern == value, False),
    "ArnLike": (_wildcard, False),
    "StringNotEquals": (lambda pattern, value: pattern == value, True),
    "StringNotLike": (_wildcard, True),
}


def _condition_holds(operator: str, key: str, patterns: list, context: Mapping[str, str]) -> bool:
    if operator == "Null":
        (expected,) = patterns
        return (key not in context) == (str(expected).lower() == "true")
    if operator not in OPERATORS:
        raise NotImplementedError(f"condition operator {operator} is not modelled")
    match, negated = OPERATORS[operator]
    if key not in context:
        return negated
    hit = any(match(str(p), context[key]) for p in patterns)
    return not hit if negated else hit


# Global condition keys that only some actions support: they must be listed for the action.
SERVICE_LISTED_GLOBALS = ("aws:RequestTag/", "aws:ResourceTag/", "aws:TagKeys")


class UnsupportedConditionKey(ValueError):
    """A statement conditions an action on a key the action does not support."""


@cache
def _definitions() -> dict[str, dict]:
    """parliament's bundled IAM definition (the Service Authorization Reference), by service prefix."""
    import parliament

    bundled = Path(parliament.__file__).with_name("iam_definition.json")
    return {service["prefix"]: service for service in json.loads(bundled.read_text(encoding="utf-8"))}


@cache
def supported_condition_keys(action: str) -> tuple[str, ...]:
    """Condition keys `service:Action` supports: those of its entries and of its resource types."""
    prefix, _, name = action.partition(":")
    service = _definitions()[prefix]
    privilege = next((p for p in service["privileges"] if p["privilege"].lower() == name.lower()), None)
    if privilege is None:
        raise KeyError(f"{action} is not in the Service Authorization Reference")
    resource_keys = {r["resource"]: r["condition_keys"] for r in service["resources"]}
    keys: set[str] = set()
    for entry in privilege["resource_types"]:
        keys.update(entry["condition_keys"])
        keys.update(resource_keys.get(entry["resource_type"].rstrip("*"), []))
    return tuple(sorted(keys))


def supports(action: str, key: str) -> bool:
    """Whether `action` supports condition key `key` (global keys always, but the tag keys)."""
    if key.lower().startswith("aws:") and not key.lower().startswith(
        tuple(k.lower() for k in SERVICE_LISTED_GLOBALS)
    ):
        return True
    for listed in supported_condition_keys(action):
        pattern = re.sub(r"\$\{TagKey\}|<key>", "*", listed)
        if _wildcard(pattern, key, ignore_case=True):
            return True
    return False


def unsupported_condition_keys(policy: Mapping[str, Any], actions: Iterable[str]) -> list[str]:
    """'Sid: action does not support key' for each of `actions` a statement conditions wrongly."""
    found = []
    for statement in _listed(policy["Statement"]):
        keys = [key for block in statement.get("Condition", {}).values() for key in block]
        for action in actions:
            if any(_wildcard(a, action, ignore_case=True) for a in _listed(statement["Action"])):
                found += [
                    f"{statement.get('Sid', '?')}: {action} does not support {key}"
                    for key in keys
                    if not supports(action, key)
                ]
    return found


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    """Whether a statement applies to a request (action, resource and every condition).

    Raises UnsupportedConditionKey when the statement conditions the request's action on a key the
    action does not support.
    """
    if not any(_wildcard(a, request.action, ignore_case=True) for a in _listed(statement["Action"])):
        return False
    if "NotResource" in statement:  # every resource but these
        if any(_wildcard(r, request.resource) for r in _listed(statement["NotResource"])):
            return False
    elif not any(_wildcard(r, request.resource) for r in _listed(statement.get("Resource", "*"))):
        return False
    bad = unsupported_condition_keys({"Statement": [statement]}, [request.action])
    if bad:
        raise UnsupportedConditionKey("; ".join(bad) + " (Service Authorization Reference)")
    for operator, keys in statement.get("Condition", {}).items():
        for key, patterns in keys.items():
            if not _condition_holds(operator, key, _listed(patterns), request.context):
                return False
    return True


def decide(policy: Mapping[str, Any], request: Request) -> str:
    """'allow', 'deny' (an explicit Deny matched) or 'implicit deny' (no Allow matched)."""
    statements = _listed(policy["Statement"])
    if any(s["Effect"] == "Deny" and statement_matches(s, request) for s in statements):
        return "deny"
    if any(s["Effect"] == "Allow" and statement_matches(s, request) for s in statements):
        return "allow"
    return "implicit deny"


def refused(policy: Mapping[str, Any], requests: Iterable[Request], *, resource_policy: bool = False) -> list:
    """The requests the policy does not let through: identity policies must allow, a bucket
    policy (resource_policy=True) only must not deny."""
    bad = []
    for request in requests:
        verdict = decide(policy, request)
        if verdict == "deny" or (verdict == "implicit deny" and not resource_policy):
            bad.append(f"{verdict}: {request}")
    return bad


def unused_grants(policy: Mapping[str, Any], requests: Iterable[Request]) -> set[str]:
    """Allow statements' actions (Sid:action) that no request used."""
    requests = list(requests)
    unused = set()
    for statement in _listed(policy["Statement"]):
        if statement["Effect"] != "Allow":
            continue
        for action in _listed(statement["Action"]):
            single = {**statement, "Action": action}
            if not any(statement_matches(single, r) for r in requests):
                unused.add(f"{statement.get('Sid', '?')}:{action}")
    return unused


# ---------------------------------------------------------------------------------------------
# Calls -> authorization requests
# ---------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One recorded AWS API call."""

    service: str
    operation: str
    params: Mapping[str, Any]
    response: Mapping[str, Any]
    region: str


def _s3_object(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _sse(params: Mapping[str, Any]) -> dict[str, str]:
    sse = params.get("ServerSideEncryption")
    return {"s3:x-amz-server-side-encryption": sse} if sse else {}


def _kms_for_write(params: Mapping[str, Any], region: str, name: str) -> list[Request]:
    """SSE-KMS writes also call KMS as the caller: GenerateDataKey, and Decrypt for multipart
    ("Using server-side encryption with AWS KMS keys", /AmazonS3/latest/userguide/UsingKMSEncryption.html)."""
    if params.get("ServerSideEncryption") != "aws:kms":
        return []
    key = params["SSEKMSKeyId"]
    arn = key if key.startswith("arn:") else f"arn:aws:kms:{region}:{ACCOUNT}:key/{key}"
    actions = ["kms:GenerateDataKey"] + (["kms:Decrypt"] if name == "CreateMultipartUpload" else [])
    return [Request(a, arn, {}, name) for a in actions]


def s3_requests(call: Call, upload_encryption: dict[str, dict]) -> list[Request]:  # ruff: ignore[too-many-return-statements]
    """S3 operations authorize as these actions ("Amazon S3 API operations and permissions" in the
    Service Authorization Reference, /service-authorization/latest/reference/list_amazons3.html)."""
    p, name = call.params, call.operation
    bucket = p.get("Bucket", "")
    obj = _s3_object(bucket, p.get("Key", ""))
    if name == "HeadBucket":
        # HeadBucket is authorized as s3:ListBucket and carries no s3:prefix (API_HeadBucket.html).
        return [Request("s3:ListBucket", f"arn:aws:s3:::{bucket}", {}, name)]
    if name in {"ListObjectsV2", "ListObjects"}:
        context = {"s3:prefix": p["Prefix"]} if "Prefix" in p else {}
        return [Request("s3:ListBucket", f"arn:aws:s3:::{bucket}", context, name)]
    if name == "GetBucketEncryption":
        return [Request("s3:GetEncryptionConfiguration", f"arn:aws:s3:::{bucket}", {}, name)]
    if name == "GetBucketLocation":
        return [Request("s3:GetBucketLocation", f"arn:aws:s3:::{bucket}", {}, name)]
    if name in {"GetObject", "HeadObject"}:
        return [Request("s3:GetObject", obj, {}, name)]
    if name in {"PutObject", "CreateMultipartUpload"}:
        if name == "CreateMultipartUpload":
            upload_encryption[call.response.get("UploadId", "")] = dict(p)
        return [Request("s3:PutObject", obj, _sse(p), name), *_kms_for_write(p, call.region, name)]
    if name in {"UploadPart", "CompleteMultipartUpload"}:
        # Parts carry no encryption header: the upload's encryption was set when it was created.
        started = upload_encryption.get(p.get("UploadId", ""), {})
        kms = _kms_for_write(started, call.region, name) if name == "UploadPart" else []
        return [Request("s3:PutObject", obj, {}, name), *kms]
    if name == "UploadPartCopy":
        source = p["CopySource"]
        return [
            Request("s3:PutObject", obj, {}, name),
            Request("s3:GetObject", _s3_object(source["Bucket"], source["Key"]), {}, name),
        ]
    if name == "AbortMultipartUpload":
        return [Request("s3:AbortMultipartUpload", obj, {}, name)]
    if name == "DeleteObject":
        return [Request("s3:DeleteObject", obj, {}, name)]
    if name == "DeleteObjects":
        return [
            Request("s3:DeleteObject", _s3_object(bucket, o["Key"]), {}, name) for o in p["Delete"]["Objects"]
        ]
    raise KeyError(f"no IAM mapping for s3:{name}: add it to tests/iam.py")


def _tags_context(tags: Iterable[Mapping[str, str]], kind: str) -> dict[str, str]:
    return {f"aws:{kind}/{t['Key']}": t["Value"] for t in tags}


def emr_requests(call: Call, cluster_tags: dict[str, list]) -> list[Request]:
    """EMR operations; cluster actions carry the cluster's tags as aws:ResourceTag/*."""
    p, name = call.params, call.operation
    cluster_arn = f"arn:aws:elasticmapreduce:{call.region}:{ACCOUNT}:cluster/"
    if name == "RunJobFlow":
        cluster_id = call.response.get("JobFlowId", "new")
        cluster_tags[cluster_id] = p.get("Tags", [])
        request_tags = _tags_context(p.get("Tags", []), "RequestTag")
        out = [Request("elasticmapreduce:RunJobFlow", "*", request_tags, name)]
        if p.get("Tags"):  # tagging on create is authorized as AddTags too
            out.append(Request("elasticmapreduce:AddTags", cluster_arn + cluster_id, request_tags, name))
        if "AutoTerminationPolicy" in p:
            # "Using an auto-termination policy" (EMR Management Guide,
            # /emr/latest/ManagementGuide/emr-auto-termination-policy.html): applying a policy needs
            # elasticmapreduce:PutAutoTerminationPolicy, also when it comes with RunJobFlow.
            # The action supports no condition key (its only resource type, cluster, has none
            # listed for it): the request carries none here, and the evaluator refuses a statement
            # that conditions it on one.
            out.append(
                Request("elasticmapreduce:PutAutoTerminationPolicy", cluster_arn + cluster_id, {}, name)
            )
        # At an account's first cluster EMR creates its service-linked cleanup role with the
        # caller's permissions ("Using service-linked roles for Amazon EMR for cleanup"); moto's
        # account never has it.
        out.append(
            Request(
                "iam:CreateServiceLinkedRole",
                f"arn:aws:iam::{ACCOUNT}:role/{SERVICE_ROLE_PATHS['AWSServiceRoleForEMRCleanup']}"
                "AWSServiceRoleForEMRCleanup",
                {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"},
                name,
            )
        )
        # RunJobFlow's dependent action is iam:PassRole for both roles (Service Authorization
        # Reference, /service-authorization/latest/reference/list_amazonelasticmapreduce.html).
        for role, service in ((p["ServiceRole"], "elasticmapreduce"), (p["JobFlowRole"], "ec2")):
            out.append(
                Request(
                    "iam:PassRole",
                    f"arn:aws:iam::{ACCOUNT}:role/{role}",
                    {"iam:PassedToService": f"{service}.amazonaws.com"},
                    name,
                )
            )
        return out
    if name in {"ListReleaseLabels", "ListSupportedInstanceTypes", "DescribeReleaseLabel"}:
        return [Request(f"elasticmapreduce:{name}", "*", {}, name)]
    # The cluster resource type (aws:ResourceTag conditions): Service Authorization Reference,
    # list_amazonelasticmapreduce (ListInstanceGroups: resource type cluster*).
    if name in {
        "AddJobFlowSteps",
        "DescribeCluster",
        "DescribeStep",
        "ListInstanceGroups",
        "ListSteps",
        "CancelSteps",
    }:
        cluster_id = p["ClusterId"] if "ClusterId" in p else p["JobFlowId"]
        context = _tags_context(cluster_tags.get(cluster_id, []), "ResourceTag")
        return [Request(f"elasticmapreduce:{name}", cluster_arn + cluster_id, context, name)]
    if name == "ListClusters":  # no resource type: Resource "*" (list_amazonelasticmapreduce)
        return [Request("elasticmapreduce:ListClusters", "*", {}, name)]
    if name == "TerminateJobFlows":
        return [
            Request(
                "elasticmapreduce:TerminateJobFlows",
                cluster_arn + cid,
                _tags_context(cluster_tags.get(cid, []), "ResourceTag"),
                name,
            )
            for cid in p["JobFlowIds"]
        ]
    raise KeyError(f"no IAM mapping for emr:{name}: add it to tests/iam.py")


def requests_for(calls: Iterable[Call]) -> list[Request]:
    """Every authorization request the recorded calls made, in order (boto3 talks HTTPS to AWS)."""
    cluster_tags: dict[str, list] = {}
    uploads: dict[str, dict] = {}
    out: list[Request] = []
    for call in calls:
        if call.service == "s3":
            out += [
                Request(r.action, r.resource, {**r.context, "aws:SecureTransport": "true"}, r.call)
                if r.action.startswith("s3:")
                else r
                for r in s3_requests(call, uploads)
            ]
        elif call.service == "emr":
            out += emr_requests(call, cluster_tags)
        elif call.service == "iam" and call.operation == "GetRole":
            name = call.params["RoleName"]
            role = f"arn:aws:iam::{ACCOUNT}:role/{SERVICE_ROLE_PATHS.get(name, '')}{name}"
            out.append(Request("iam:GetRole", role, {}, call.operation))
        elif call.service == "iam" and call.operation == "SimulatePrincipalPolicy":
            out.append(
                Request("iam:SimulatePrincipalPolicy", call.params["PolicySourceArn"], {}, call.operation)
            )
        elif call.service == "iam" and call.operation == "GetInstanceProfile":
            name = call.params["InstanceProfileName"]
            profile = f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}"
            out.append(Request("iam:GetInstanceProfile", profile, {}, call.operation))
        elif call.service == "ec2" and call.operation in {
            "DescribeSubnets",
            "DescribeInstances",
            "DescribeInstanceTypes",
        }:
            out.append(Request(f"ec2:{call.operation}", "*", {}, call.operation))
        elif call.service == "service-quotas" and call.operation == "GetServiceQuota":
            out.append(Request("servicequotas:GetServiceQuota", "*", {}, call.operation))
        elif call.service == "kms" and call.operation in {"DescribeKey", "GetKeyPolicy"}:
            key = call.params["KeyId"]
            arn = key if key.startswith("arn:") else f"arn:aws:kms:{call.region}:{ACCOUNT}:key/{key}"
            out.append(Request(f"kms:{call.operation}", arn, {}, call.operation))
        elif call.service == "sts" and call.operation == "GetCallerIdentity":
            continue  # needs no permission ("GetCallerIdentity", STS API Reference)
        else:
            raise KeyError(f"no IAM mapping for {call.service}:{call.operation}: add it to tests/iam.py")
    return out


POLICY = Path(__file__).resolve().parents[1] / "plugins" / "orchard" / "aws" / "airflow-iam-policy.json"
KMS_KEY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def airflow_policy(
    bucket: str, prefix: str, kms_key: str = KMS_KEY, path: Path = POLICY, region: str = "eu-west-1"
) -> dict:
    """The shipped Airflow policy for a lake at s3://bucket/prefix in moto's account."""
    return load_policy(
        path,
        {
            "LAKE_BUCKET": bucket,
            "LAKE_PREFIX": prefix,
            "ACCOUNT_ID": ACCOUNT,
            "KMS_KEY_ID": kms_key,
            "REGION": region,
        },
    )
