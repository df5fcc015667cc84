"""Where population members' checkpoints live between rounds: a store every worker can reach.

`LocalCheckpointStore` keeps them as files under LRLAB_DATA_DIR/checkpoints, on the volume the workers share
(docker-compose mounts one). Writes are atomic (a temporary file in the same folder, fsynced, then renamed),
so a reader sees a whole checkpoint or none. An S3-compatible store would implement the same three methods.
Keys are `pbt/<pbt id>/<member>/<epoch>`; the bytes are trainer.checkpoint_to_bytes output, read back with
torch.load(weights_only=True) by trainer.checkpoint_from_bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from lrlab.settings import Settings, get_settings

KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


class CheckpointStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The bytes under `key`; KeyError when there are none."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` if it is there."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


def member_key(pbt_id: str, member: int, epoch: int) -> str:
    return f"pbt/{pbt_id}/{member}/{epoch}"


def _checked(key: str) -> str:
    if not KEY.match(key):
        raise ValueError(f"Invalid checkpoint key: {key!r}")
    return key


class LocalCheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        path = self.root / _checked(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
        try:
            with partial.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / _checked(key)).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        (self.root / _checked(key)).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / _checked(prefix), ignore_errors=True)


def pbt_prefix(pbt_id: str) -> str:
    return f"pbt/{pbt_id}"


def get_checkpoint_store(settings: Settings | None = None) -> CheckpointStore:
    return LocalCheckpointStore((settings or get_settings()).data_dir / "checkpoints")
