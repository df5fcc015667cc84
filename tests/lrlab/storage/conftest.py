"""The storage tests run every case against both backends (tests/storage_fixtures.py)."""

from tests.storage_fixtures import moto_server, s3_bucket, s3_env, storage_url

__all__ = ["moto_server", "s3_bucket", "s3_env", "storage_url"]
