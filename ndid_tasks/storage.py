"""S3 access: listing by time window, reading images, writing records, calibration docs and tags.

Transient errors (throttling, 5xx, dropped connections) are retried with exponential backoff by
botocore's "standard" retry mode; the caller sees an exception only after the retries are spent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .config import Settings

log = logging.getLogger(__name__)

class StorageError(RuntimeError):
    """An S3 request failed after its retries (or was refused)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectInfo:
        return cls(d["key"], int(d["size"]), d["etag"], datetime.fromisoformat(d["last_modified"]))


class S3Store:
    """One bucket on one S3 endpoint, with the credentials from Settings."""

    def __init__(self, settings: Settings, bucket: str | None = None, retries: int | None = None) -> None:
        self.settings = settings
        self.bucket = bucket or settings.s3_bucket
        retries = settings.s3_retries if retries is None else retries
        config = Config(retries={"max_attempts": retries + 1, "mode": "standard"},
                        connect_timeout=5, read_timeout=60, signature_version="s3v4",
                        s3={"addressing_style": "path"})
        self.client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key or None,
            aws_secret_access_key=settings.s3_secret_key or None, config=config)

    # ---- bucket
    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                self.client.create_bucket(Bucket=self.bucket)
            else:
                raise StorageError(f"cannot access bucket {self.bucket!r}: {exc}") from exc

    # ---- objects
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                               Metadata=metadata or {})

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            if head["ContentLength"] > max_bytes:
                raise StorageError(f"s3://{self.bucket}/{key} is {head['ContentLength']} bytes, "
                                   f"over the {max_bytes}-byte limit")
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put_json(self, key: str, doc: Any) -> None:
        self.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_jsonl(self, key: str, rows: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        self.put_bytes(key, body, "application/x-ndjson")

    def get_jsonl(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.get_bytes(key).decode().splitlines() if line.strip()]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        """Merge ``tags`` into the object's tag set (S3 allows 10 tags; values <= 256 chars)."""
        current = {t["Key"]: t["Value"] for t in
                   self.client.get_object_tagging(Bucket=self.bucket, Key=key).get("TagSet", [])}
        current.update({k: str(v)[:256] for k, v in tags.items()})
        self.client.put_object_tagging(Bucket=self.bucket, Key=key, Tagging={
            "TagSet": [{"Key": k, "Value": v} for k, v in sorted(current.items())]})

    def get_tags(self, key: str) -> dict[str, str]:
        resp = self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    # ---- listing
    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"], obj["Size"], obj["ETag"].strip('"'), obj["LastModified"])

    def iter_window(self, prefix: str, start: datetime | None, end: datetime | None,
                    suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` with start <= LastModified < end, streamed page by page (in key
        order). Half-open windows mean consecutive data intervals never share an object, and a
        backfill over a past range re-lists exactly that range."""
        for obj in self.iter_objects(prefix):
            if obj.key.endswith("/"):
                continue
            if suffixes is not None and not obj.key.lower().endswith(suffixes):
                continue
            if start is not None and obj.last_modified < start:
                continue
            if end is not None and obj.last_modified >= end:
                continue
            yield obj

    def list_window(self, prefix: str, start: datetime | None, end: datetime | None,
                    suffixes: tuple[str, ...] | None = None) -> list[ObjectInfo]:
        """:meth:`iter_window` in ingestion order (oldest first, then by key), held in memory."""
        return sorted(self.iter_window(prefix, start, end, suffixes), key=lambda o: (o.last_modified, o.key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix
