"""Where population members' checkpoints live between rounds: the object store (lrlab.storage), under
`checkpoints/`, which every worker reaches (S3, or the data dir when that is all there is).

Keys are `pbt/<pbt id>/<member>/<epoch>`; the bytes are trainer.checkpoint_to_bytes output, read back with
torch.load(weights_only=True) by trainer.checkpoint_from_bytes. Every put is atomic (lrlab.storage): a reader
sees a whole checkpoint or none. A worker writes a member's checkpoint only while it holds the member's lease
(worker/pbt.py checks it first), so one that lost its host and came back writes nothing here.
"""

from __future__ import annotations

import re

from lrlab.settings import Settings
from lrlab.storage import Storage, get_storage

KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
ROOT = "checkpoints"


def member_key(pbt_id: str, member: int, epoch: int) -> str:
    return f"pbt/{pbt_id}/{member}/{epoch}"


def pbt_prefix(pbt_id: str) -> str:
    return f"pbt/{pbt_id}"


def _checked(key: str) -> str:
    if not KEY.match(key):
        raise ValueError(f"Invalid checkpoint key: {key!r}")
    return f"{ROOT}/{key}"


class CheckpointStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def put(self, key: str, data: bytes) -> None:
        self.storage.put_bytes(_checked(key), data)

    def get(self, key: str) -> bytes:
        """The bytes under `key`; KeyError (lrlab.storage.NotFound) when there are none."""
        return self.storage.get_bytes(_checked(key))

    def delete(self, key: str) -> None:
        """Remove `key` if it is there."""
        self.storage.delete(_checked(key))

    def delete_prefix(self, prefix: str) -> None:
        self.storage.delete_prefix(_checked(prefix))


def get_checkpoint_store(settings: Settings | None = None) -> CheckpointStore:
    return CheckpointStore(get_storage(settings))
