"""Storage keys and URLs, checked: no I/O, no settings (lrlab.settings checks LRLAB_STORAGE_URL with it)."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

KEY = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$")
MAX_KEY_CHARS = 900  # S3 allows 1024 bytes; the bucket prefix takes the rest


def checked_key(key: str) -> str:
    if len(key) > MAX_KEY_CHARS or not KEY.match(key):
        raise ValueError(f"Invalid storage key: {key!r}")
    return key


def checked_prefix(prefix: str) -> str:
    """A prefix is a key naming a folder of keys: 'pbt/abc' covers 'pbt/abc/0/3', never 'pbt/abcd'."""
    return checked_key(prefix.rstrip("/"))


BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def check_url(url: str) -> tuple[str, str, str]:
    """(scheme, folder or bucket, prefix) of a storage URL; ValueError saying what is wrong with it."""
    parts = urlsplit(url.strip())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"a file storage URL is file:///absolute/path, got {url!r}")
        return "file", unquote(parts.path), ""
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"an S3 storage URL is s3://bucket/prefix, got {url!r}")
        if not BUCKET.match(parts.netloc):
            raise ValueError(f"{parts.netloc!r} is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        if parts.query or parts.fragment:
            raise ValueError(f"an S3 storage URL takes no query or fragment, got {url!r}")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            checked_prefix(prefix)
        return "s3", parts.netloc, prefix
    raise ValueError(f"storage URL must start with file:// or s3://, got {url!r}")
