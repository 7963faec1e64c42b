"""A FragmentStore in an S3-compatible object store (MinIO, Ceph RGW, AWS), through boto3.

Each store is one bucket (and optional prefix) of the object store; fragments
are objects named by their fragment ids, so the object store, like any node,
sees only opaque ids and authenticated ciphertext. Node URL form:
`s3+https://host:port/bucket[/prefix]` (or `s3+http://`); credentials come
from SECURECLOUD_KVS_S3_KEY_ID and SECURECLOUD_KVS_S3_SECRET (delivered by
CAS), region from SECURECLOUD_KVS_S3_REGION (default us-east-1).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


class S3FragmentStore:
    def __init__(
        self,
        url: str,
        key_id: str | None = None,
        secret: str | None = None,
        region: str | None = None,
        verify: str | bool | None = None,
    ):
        parts = urlsplit(url)
        scheme = parts.scheme.removeprefix("s3+")
        bucket, _, prefix = parts.path.lstrip("/").partition("/")
        self.name = url
        self.bucket, self.prefix = bucket, (prefix.rstrip("/") + "/") if prefix else ""
        self._s3 = boto3.client(
            "s3",
            endpoint_url=f"{scheme}://{parts.netloc}",
            aws_access_key_id=key_id or os.environ.get("SECURECLOUD_KVS_S3_KEY_ID"),
            aws_secret_access_key=secret or os.environ.get("SECURECLOUD_KVS_S3_SECRET"),
            region_name=region or os.environ.get("SECURECLOUD_KVS_S3_REGION", "us-east-1"),
            verify=verify,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                max_pool_connections=32,
            ),
        )

    def ensure_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._s3.create_bucket(Bucket=self.bucket)

    def put(self, fragment_id: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self.prefix + fragment_id, Body=data)

    def get(self, fragment_id: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self.prefix + fragment_id)[
                "Body"
            ].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def delete(self, fragment_id: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + fragment_id)

    def list(self, after: str = "", limit: int = 1000) -> list[str]:
        response = self._s3.list_objects_v2(
            Bucket=self.bucket,
            Prefix=self.prefix,
            MaxKeys=limit,
            StartAfter=self.prefix + after if after else "",
        )
        return [o["Key"][len(self.prefix) :] for o in response.get("Contents", [])]

    def close(self) -> None:
        self._s3.close()
