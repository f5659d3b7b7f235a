"""The shipped IAM and bucket policies, evaluated per request with conditions, and linted by parliament."""

from __future__ import annotations

import json
import re

import pytest

from tests import iam
from tests.conftest import ROOT

BUCKET, PREFIX = "orchard-lake", "prod"
POLICY = iam.airflow_policy(BUCKET, PREFIX)
BUCKET_POLICY = ROOT / "plugins" / "orchard" / "aws" / "lake-bucket-policy.json"
CLUSTER = f"arn:aws:elasticmapreduce:eu-west-1:{iam.ACCOUNT}:cluster/j-1"


def s3_call(operation, **params):
    return iam.Call("s3", operation, params, {"UploadId": "u-1"}, "eu-west-1")


def decisions(policy, *calls):
    return [iam.decide(policy, r) for r in iam.requests_for(calls)]


@pytest.mark.backs("least-privilege IAM policy")
def test_evaluator_matches_wildcards_and_conditions():
    allow = {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/p/*"}
    assert iam.statement_matches(allow, iam.Request("s3:GetObject", "arn:aws:s3:::b/p/x"))
    assert iam.statement_matches(
        allow, iam.Request("S3:getobject", "arn:aws:s3:::b/p/x")
    )  # actions: any case
    assert not iam.statement_matches(
        allow, iam.Request("s3:GetObject", "arn:aws:s3:::b/P/x")
    )  # ARNs: exact case
    assert not iam.statement_matches(allow, iam.Request("s3:PutObject", "arn:aws:s3:::b/p/x"))
    bucket = "arn:aws:s3:::b"
    listing = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket}
    like = {**listing, "Condition": {"StringLike": {"s3:prefix": ["p", "p/*"]}}}
    assert iam.statement_matches(like, iam.Request("s3:ListBucket", bucket, {"s3:prefix": "p/a"}))
    assert not iam.statement_matches(like, iam.Request("s3:ListBucket", bucket, {"s3:prefix": "q"}))
    # A key the request does not carry: positive operators are false, negated ones true.
    assert not iam.statement_matches(like, iam.Request("s3:ListBucket", bucket))
    put = {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/p/*"}
    key = "s3:x-amz-server-side-encryption"
    negated = {**put, "Condition": {"StringNotEquals": {key: "aws:kms"}}}
    assert iam.statement_matches(negated, iam.Request("s3:PutObject", "arn:aws:s3:::b/p/x"))
    null = {**put, "Condition": {"Null": {key: "true"}}}
    assert iam.statement_matches(null, iam.Request("s3:PutObject", "arn:aws:s3:::b/p/x"))
    assert not iam.statement_matches(null, iam.Request("s3:PutObject", "arn:aws:s3:::b/p/x", {key: "AES256"}))
    deny = {"Version": "2012-10-17", "Statement": [allow, {**allow, "Effect": "Deny"}]}
    assert iam.decide(deny, iam.Request("s3:GetObject", "arn:aws:s3:::b/p/x")) == "deny"


@pytest.mark.backs("least-privilege IAM policy")
def test_head_bucket_is_refused_by_the_least_privilege_listing_so_orchard_lists_the_prefix():
    # HeadBucket is s3:ListBucket without s3:prefix (S3 API Reference, "HeadBucket",
    # /AmazonS3/latest/API/API_HeadBucket.html): the prefix-scoped listing cannot allow it.
    assert decisions(POLICY, s3_call("HeadBucket", Bucket=BUCKET)) == ["implicit deny"]
    listing = s3_call("ListObjectsV2", Bucket=BUCKET, Prefix=f"{PREFIX}/", MaxKeys=1)
    assert decisions(POLICY, listing) == ["allow"]
    elsewhere = s3_call("ListObjectsV2", Bucket=BUCKET, Prefix="other/")
    assert decisions(POLICY, elsewhere) == ["implicit deny"]


@pytest.mark.backs("least-privilege IAM policy")
def test_clusters_are_created_tagged_with_auto_termination_and_only_our_roles_are_passed():
    spec = {
        "Tags": [{"Key": "project", "Value": "orchard"}],
        "AutoTerminationPolicy": {"IdleTimeout": 1800},
        "ServiceRole": "EMR_DefaultRole",
        "JobFlowRole": "EMR_EC2_DefaultRole",
    }
    run = iam.Call("emr", "RunJobFlow", spec, {"JobFlowId": "j-1"}, "eu-west-1")
    made = iam.requests_for([run])
    assert {r.action for r in made} == {
        "elasticmapreduce:RunJobFlow",
        "elasticmapreduce:AddTags",
        "elasticmapreduce:PutAutoTerminationPolicy",
        "iam:PassRole",
        "iam:CreateServiceLinkedRole",  # EMR's cleanup role, at an account's first cluster
    }
    assert iam.refused(POLICY, made) == []
    other_service_role = iam.Request(
        "iam:CreateServiceLinkedRole",
        f"arn:aws:iam::{iam.ACCOUNT}:role/aws-service-role/ec2.amazonaws.com/AWSServiceRoleForEC2",
        {"iam:AWSServiceName": "ec2.amazonaws.com"},
    )
    assert iam.decide(POLICY, other_service_role) == "implicit deny"  # that one role only
    untagged = iam.Call("emr", "RunJobFlow", {**spec, "Tags": []}, {"JobFlowId": "j-2"}, "eu-west-1")
    assert iam.refused(POLICY, iam.requests_for([untagged]))  # no project tag: no cluster
    v2 = iam.Call(
        "emr", "RunJobFlow", {**spec, "ServiceRole": "EMR_DefaultRole_V2"}, {"JobFlowId": "j-3"}, "eu-west-1"
    )
    assert iam.refused(POLICY, iam.requests_for([v2])) == []  # the v2 service role may be passed too
    other_role = iam.Call("emr", "RunJobFlow", {**spec, "ServiceRole": "Admin"}, {}, "eu-west-1")
    assert any("iam:PassRole" in r for r in iam.refused(POLICY, iam.requests_for([other_role])))
    foreign = iam.Request("elasticmapreduce:TerminateJobFlows", CLUSTER, {"aws:ResourceTag/project": "x"})
    assert iam.decide(POLICY, foreign) == "implicit deny"


def documented_bucket_policies() -> list[dict]:
    """Every bucket policy (a JSON block with a Principal) docs/aws.md shows."""
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "aws.md").read_text(encoding="utf-8"), re.S)
    return [json.loads(b) for b in blocks if '"Principal"' in b]


MULTIPART = (
    s3_call("CreateMultipartUpload", Bucket=BUCKET, Key=f"{PREFIX}/x.csv", ServerSideEncryption="aws:kms",
            SSEKMSKeyId=iam.KMS_KEY),
    s3_call("UploadPart", Bucket=BUCKET, Key=f"{PREFIX}/x.csv", UploadId="u-1", PartNumber=1),
    s3_call("UploadPartCopy", Bucket=BUCKET, Key=f"{PREFIX}/x.csv", UploadId="u-1", PartNumber=2,
            CopySource={"Bucket": BUCKET, "Key": f"{PREFIX}/part-0"}),
    s3_call("CompleteMultipartUpload", Bucket=BUCKET, Key=f"{PREFIX}/x.csv", UploadId="u-1"),
)  # fmt: skip


@pytest.mark.parametrize(
    "policy",
    [
        iam.load_policy(BUCKET_POLICY, {"LAKE_BUCKET": BUCKET, "LAKE_PREFIX": PREFIX}),
        *documented_bucket_policies(),
    ],
    ids=lambda p: p["Statement"][0].get("Sid", "?"),
)
@pytest.mark.backs("encryption enforced without breaking multipart uploads")
def test_recommended_bucket_policies_let_multipart_uploads_through(policy):
    # UploadPart/UploadPartCopy cannot carry x-amz-server-side-encryption, so a Deny on its absence
    # refuses every multipart upload (the CSV merge, EMRFS's large writes).
    policy = json.loads(json.dumps(policy).replace("LAKE_BUCKET", BUCKET).replace("LAKE_PREFIX", PREFIX))
    assert iam.refused(policy, iam.requests_for(MULTIPART), resource_policy=True) == []


@pytest.mark.backs("encryption enforced without breaking multipart uploads")
def test_emrs_log_writes_are_not_refused_whatever_encryption_they_ask_for():
    """The documentation does not say which encryption header EMR's log pusher sends to LogUri
    ("Configure Amazon EMR cluster logging and debugging"): the SSE-KMS bucket policy exempts the
    default log prefix, so logs arrive whatever it sends; any other write asking for AES256 is denied."""
    policy = iam.load_policy(BUCKET_POLICY, {"LAKE_BUCKET": BUCKET, "LAKE_PREFIX": PREFIX})
    log = f"{PREFIX}/emr-logs/j-1/steps/s-1/stderr.gz"
    for extra in ({"ServerSideEncryption": "AES256"}, {}):
        (request,) = iam.requests_for([s3_call("PutObject", Bucket=BUCKET, Key=log, **extra)])
        assert iam.decide(policy, request) == "implicit deny"  # not denied: the bucket policy allows nothing
    elsewhere = s3_call(
        "PutObject", Bucket=BUCKET, Key=f"{PREFIX}/runs/x.json", ServerSideEncryption="AES256"
    )
    assert iam.decide(policy, iam.requests_for([elsewhere])[0]) == "deny"


@pytest.mark.backs("encryption enforced without breaking multipart uploads")
def test_the_sse_kms_bucket_policy_refuses_writes_that_ask_for_another_encryption():
    policy = iam.load_policy(BUCKET_POLICY, {"LAKE_BUCKET": BUCKET, "LAKE_PREFIX": PREFIX})
    sse_s3 = s3_call("PutObject", Bucket=BUCKET, Key="a", ServerSideEncryption="AES256")
    kms = s3_call("PutObject", Bucket=BUCKET, Key="a", ServerSideEncryption="aws:kms", SSEKMSKeyId="k")
    default = s3_call("PutObject", Bucket=BUCKET, Key="a")  # the bucket's default encryption applies
    assert iam.requests_for([sse_s3])[0].context["s3:x-amz-server-side-encryption"] == "AES256"
    assert [iam.decide(policy, iam.requests_for([c])[0]) for c in (sse_s3, kms, default)] == [
        "deny",
        "implicit deny",
        "implicit deny",
    ]


@pytest.mark.backs("least-privilege IAM policy")
def test_parliament_finds_nothing_in_the_shipped_policies():
    from parliament import analyze_policy_string

    bucket_policy = iam.load_policy(BUCKET_POLICY, {"LAKE_BUCKET": BUCKET, "LAKE_PREFIX": PREFIX})
    for name, policy in (("airflow-iam-policy.json", POLICY), ("lake-bucket-policy.json", bucket_policy)):
        findings = analyze_policy_string(json.dumps(policy), include_community_auditors=False).findings
        assert [(f.issue, f.detail, f.location) for f in findings] == [], name


@pytest.mark.backs("encryption enforced without breaking multipart uploads")
def test_the_classic_deny_without_the_header_policy_refuses_multipart_uploads():
    """What docs/aws.md warns against, evaluated: the multipart test above would catch such a policy."""
    classic = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyUnencryptedObjectUploads",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/*",
                "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}},
            }
        ],
    }
    refused = iam.refused(classic, iam.requests_for(MULTIPART), resource_policy=True)
    # Only CreateMultipartUpload carries the encryption header; the parts and the completion cannot.
    assert [r.split(":")[1].strip() for r in refused] == [
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    ]


@pytest.mark.backs("encryption enforced without breaking multipart uploads")
def test_the_bucket_policy_docs_aws_md_shows_is_the_shipped_one():
    shipped = json.loads(BUCKET_POLICY.read_text(encoding="utf-8"))
    assert shipped in documented_bucket_policies()


@pytest.mark.backs("least-privilege IAM policy")
def test_the_evaluator_refuses_condition_keys_an_action_does_not_support():
    """The Service Authorization Reference (parliament's bundled copy) lists no aws:RequestTag key for
    PutAutoTerminationPolicy: the statement shipped before conditioned it on one."""
    earlier = {
        "Sid": "SetTheIdleTimeoutOnCreate",
        "Effect": "Allow",
        "Action": ["elasticmapreduce:PutAutoTerminationPolicy"],
        "Resource": f"arn:aws:elasticmapreduce:*:{iam.ACCOUNT}:cluster/*",
        "Condition": {"StringEquals": {"aws:RequestTag/project": "orchard"}},
    }
    request = iam.Request(
        "elasticmapreduce:PutAutoTerminationPolicy", CLUSTER, {"aws:RequestTag/project": "orchard"}
    )
    with pytest.raises(iam.UnsupportedConditionKey, match="does not support aws:RequestTag/project"):
        iam.decide({"Statement": [earlier]}, request)
    # The keys the shipped statements use are supported by every action they grant.
    actions = {a for s in POLICY["Statement"] for a in iam._listed(s["Action"])}
    assert iam.unsupported_condition_keys(POLICY, sorted(actions)) == []
    bucket_policy = iam.load_policy(BUCKET_POLICY, {"LAKE_BUCKET": BUCKET, "LAKE_PREFIX": PREFIX})
    assert iam.unsupported_condition_keys(bucket_policy, ["s3:PutObject", "s3:GetObject"]) == []
    # Tag keys are taken where the reference lists them: RunJobFlow's request tags, a cluster's tags.
    assert iam.supports("elasticmapreduce:RunJobFlow", "aws:RequestTag/project")
    assert iam.supports("elasticmapreduce:DescribeCluster", "aws:ResourceTag/project")
    assert not iam.supports("elasticmapreduce:ListClusters", "aws:ResourceTag/project")
