"""The S3 bucket mdstream writes to: configuration from the environment, write-once puts.

Every setting is configuration, so the same code points at AWS S3 or any S3-compatible store:

- ``MDSTREAM_S3_ENDPOINT`` (default: the local s3proxy of ``mdstream services``; empty for AWS),
- ``MDSTREAM_S3_BUCKET`` (``mdstream``), ``MDSTREAM_S3_REGION`` (``us-east-1``),
- ``MDSTREAM_S3_ACCESS_KEY_ID`` + ``MDSTREAM_S3_SECRET_ACCESS_KEY``, or
  ``MDSTREAM_S3_CREDENTIALS_FILE`` (JSON with ``access_key_id``/``secret_access_key``); default:
  the local s3proxy's generated secret file. Keys are never logged (``repr`` hides them).

Objects are immutable: :meth:`ObjectStore.put_new` checks before it puts and sends
``If-None-Match: *`` (which AWS S3 enforces; s3proxy 2.6 ignores it, so the check and key
names that are unique per content are what protect it there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mdstream.services import Settings
from mdstream.services.s3proxy import DEFAULT_BUCKET, DEFAULT_REGION, S3ProxyService

__all__ = ["ObjectExists", "ObjectStore", "S3Config", "StoreUnavailable"]


class ObjectExists(RuntimeError):
    """A put would overwrite an object: archives are write-once."""


class StoreUnavailable(RuntimeError):
    """The object store did not answer (down, unreachable, refusing): retry later."""


@dataclass(frozen=True)
class S3Config:
    endpoint: str | None
    bucket: str
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Config:
        env = dict(os.environ if env is None else env)
        local = S3ProxyService(Settings.from_env(env))
        endpoint = env.get("MDSTREAM_S3_ENDPOINT", local.address) or None
        key, secret = env.get("MDSTREAM_S3_ACCESS_KEY_ID"), env.get("MDSTREAM_S3_SECRET_ACCESS_KEY")
        if not (key and secret):
            path = env.get("MDSTREAM_S3_CREDENTIALS_FILE")
            creds = json.loads(Path(path).read_text()) if path else local.credentials()
            key, secret = creds["access_key_id"], creds["secret_access_key"]
        return cls(
            endpoint=endpoint,
            bucket=env.get("MDSTREAM_S3_BUCKET") or DEFAULT_BUCKET,
            region=env.get("MDSTREAM_S3_REGION") or DEFAULT_REGION,
            access_key_id=key,
            secret_access_key=secret,
        )

    def polars_options(self) -> dict[str, str]:
        """``storage_options`` for polars' own S3 reader/writer."""
        options = {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_region": self.region,
        }
        if self.endpoint:
            options["aws_endpoint_url"] = self.endpoint
            options["aws_allow_http"] = str(self.endpoint.startswith("http://")).lower()
        return options


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class ObjectStore:
    """A thin, typed wrapper: store errors become :class:`StoreUnavailable`."""

    def __init__(self, config: S3Config | None = None, *, attempts: int = 2) -> None:
        self.config = config or S3Config.from_env()
        self.bucket = self.config.bucket
        self._s3 = boto3.client(
            "s3",
            endpoint_url=self.config.endpoint,
            aws_access_key_id=self.config.access_key_id,
            aws_secret_access_key=self.config.secret_access_key,
            region_name=self.config.region,
            config=Config(
                # boto3 ≥ 1.36 sends CRC checksums s3proxy answers NotImplemented to.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=3,
                read_timeout=30,
            ),
        )

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._s3, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _missing(exc):
                raise KeyError(kwargs.get("Key")) from exc
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ObjectExists(kwargs.get("Key")) from exc
            if str(code).startswith("5") or code in ("SlowDown", "ServiceUnavailable"):
                raise StoreUnavailable(f"{method} {kwargs.get('Key')}: {exc}") from exc
            raise
        except BotoCoreError as exc:  # connection refused, timeouts, ...
            raise StoreUnavailable(f"{method} {kwargs.get('Key', '')}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Key=key)
        except KeyError:
            return False
        return True

    def put_new(self, key: str, body: bytes, *, content_type: str = "application/octet-stream",
                metadata: dict[str, str] | None = None) -> None:  # fmt: skip
        """Write ``key`` once; :class:`ObjectExists` if it is already there."""
        if self.exists(key):
            raise ObjectExists(key)
        self._call(
            "put_object", Key=key, Body=body, IfNoneMatch="*", ContentType=content_type,
            Metadata=metadata or {},
        )  # fmt: skip

    def get(self, key: str) -> bytes:
        """The object's bytes; KeyError when absent."""
        return self._call("get_object", Key=key)["Body"].read()

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, in lexicographic order."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # s3proxy's filesystem lists directories
                    yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        """Only for tier objects past their retention and scratch data; never the archive."""
        self._call("delete_object", Key=key)
