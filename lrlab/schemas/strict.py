"""The base of every request schema: unknown fields are errors and values are not coerced."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown fields are errors: a typo such as `momentun` must not be silently ignored. Values are not coerced
    (pydantic's strict mode): `"lr": true` or `"epochs": "2"` is a 422, not 1.0 and 2; an integer is still a
    valid float. A pair (`betas`) may come as a list, as JSON sends it: mark such fields `strict=False`."""

    model_config = ConfigDict(extra="forbid", strict=True)
