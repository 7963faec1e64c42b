"""The S3 API with unmodified clients: boto3 and rclone, over TLS, against a real gateway."""

import json
import os
import subprocess

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from securecloud.infra.supervisor import Supervisor, free_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("s3")
    supervisor = Supervisor(data_dir)
    *_, kvs = supervisor.up(free_port(), free_port(), kvs_port=free_port())
    creds = json.loads((data_dir / "kvs" / "credentials.json").read_text())
    yield kvs.url, str(data_dir / "kvs" / "ca.crt"), creds, data_dir
    supervisor.stop_all()


@pytest.fixture(scope="module")
def s3(gateway):
    url, ca, creds, _ = gateway
    return boto3.client(
        "s3",
        endpoint_url=url,
        verify=ca,
        region_name="us-east-1",
        aws_access_key_id=creds["id"],
        aws_secret_access_key=creds["secret"],
    )


def test_boto3_buckets_objects_ranges_and_listing(s3):
    s3.create_bucket(Bucket="readings")
    assert "readings" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="readings")
    body = os.urandom(300_000)
    put = s3.put_object(Bucket="readings", Key="2026/11/21/meter-1", Body=body)
    got = s3.get_object(Bucket="readings", Key="2026/11/21/meter-1")
    assert got["Body"].read() == body and got["ETag"] == put["ETag"]
    part = s3.get_object(Bucket="readings", Key="2026/11/21/meter-1", Range="bytes=100-199")
    assert part["Body"].read() == body[100:200] and part["ContentRange"] == "bytes 100-199/300000"
    tail = s3.get_object(Bucket="readings", Key="2026/11/21/meter-1", Range="bytes=-10")
    assert tail["Body"].read() == body[-10:]
    assert s3.head_object(Bucket="readings", Key="2026/11/21/meter-1")["ContentLength"] == 300_000
    for key in ("2026/11/21/meter-2", "2026/11/22/meter-1", "2026/12/01/meter-1", "top"):
        s3.put_object(Bucket="readings", Key=key, Body=b"x")
    listing = s3.list_objects_v2(Bucket="readings", Prefix="2026/", Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["2026/11/", "2026/12/"]
    days = s3.list_objects_v2(Bucket="readings", Prefix="2026/11/", Delimiter="/")
    assert [p["Prefix"] for p in days["CommonPrefixes"]] == ["2026/11/21/", "2026/11/22/"]
    keys, token = [], None
    while True:
        kwargs = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket="readings", MaxKeys=2, **kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert keys == sorted(keys) and len(keys) == 5
    s3.delete_object(Bucket="readings", Key="top")
    s3.delete_objects(Bucket="readings", Delete={"Objects": [{"Key": "2026/12/01/meter-1"}]})
    remaining = [o["Key"] for o in s3.list_objects_v2(Bucket="readings")["Contents"]]
    assert "top" not in remaining and "2026/12/01/meter-1" not in remaining


def test_boto3_multipart_upload(s3, tmp_path):
    s3.create_bucket(Bucket="archive")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * 1024 * 1024))
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    s3.upload_file(str(source), "archive", "day.bin", Config=config)
    target = tmp_path / "back.bin"
    s3.download_file("archive", "day.bin", str(target))
    assert target.read_bytes() == source.read_bytes()


def test_boto3_errors_are_s3_errors(s3, gateway):
    url, ca, creds, _ = gateway
    s3.create_bucket(Bucket="errors")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="errors", Key="missing")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="nobucket", Key="x")
    assert caught.value.response["Error"]["Code"] == "NoSuchBucket"
    wrong = boto3.client(
        "s3",
        endpoint_url=url,
        verify=ca,
        region_name="us-east-1",
        aws_access_key_id=creds["id"],
        aws_secret_access_key="wrong",
    )
    with pytest.raises(ClientError) as caught:
        wrong.list_buckets()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket="securecloud-mpu")
    assert caught.value.response["Error"]["Code"] == "InvalidBucketName"


def test_rclone_copies_checks_and_deletes(gateway, tmp_path):
    url, ca, creds, _ = gateway
    # rclone 1.60's S3 backend fails with --ca-cert or AWS_CA_BUNDLE ("unsupported
    # transport"); Go reads trusted CAs from SSL_CERT_FILE, so that points at ours.
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_CA_BUNDLE", "SSL_CERT_DIR", "SSL_CERT_FILE")
    }
    env = {
        **inherited,
        "SSL_CERT_FILE": ca,
        "SSL_CERT_DIR": str(tmp_path / "no-certs"),
        "RCLONE_CONFIG_SC_TYPE": "s3",
        "RCLONE_CONFIG_SC_PROVIDER": "Other",
        "RCLONE_CONFIG_SC_ACCESS_KEY_ID": creds["id"],
        "RCLONE_CONFIG_SC_SECRET_ACCESS_KEY": creds["secret"],
        "RCLONE_CONFIG_SC_ENDPOINT": url,
        "RCLONE_CONFIG_SC_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_SC_REGION": "us-east-1",
    }

    def rclone(*args):
        result = subprocess.run(
            ["rclone", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    local = tmp_path / "meters"
    (local / "north").mkdir(parents=True)
    for i in range(5):
        (local / "north" / f"meter-{i}.csv").write_bytes(os.urandom(1000 * (i + 1)))
    (local / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    rclone("mkdir", "sc:rclone-bucket")
    rclone("copy", str(local), "sc:rclone-bucket/upload")
    listing = rclone("ls", "sc:rclone-bucket")
    assert "upload/north/meter-4.csv" in listing and "upload/large.bin" in listing
    rclone("check", str(local), "sc:rclone-bucket/upload")  # sizes and MD5s match
    assert len(rclone("lsf", "sc:rclone-bucket/upload/north").split()) == 5
    rclone("delete", "sc:rclone-bucket/upload/north")
    assert "north" not in rclone("ls", "sc:rclone-bucket")
