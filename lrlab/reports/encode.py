"""JSON straight from numpy columns: curve points and per-epoch statistics as bytes, without a Python object per
point (orjson writes each column; a bytes template joins a row's fields).

A missing value (NaN in a column) is written as null. Floats are written in their shortest round-trip form, so a
reader gets back the very doubles that were stored, as from pydantic's or the json module's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from lrlab.reports.analysis import CURVE_FIELDS
from lrlab.reports.columnar import EpochColumns
from lrlab.reports.curves import FIELDS, Curve

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_POINT = b'{"epoch":%b,' + b",".join(b'"%b":%%b' % f.encode() for f in FIELDS) + b',"nonfinite":%b}'
_STAT_KEYS = [f"{f}_{s}" for f in CURVE_FIELDS for s in ("mean", "std")]
_STAT = b'{"epoch":%b,"n":%b,' + b",".join(b'"%b":%%b' % k.encode() for k in _STAT_KEYS) + b"}"
_EMPTY = b"[]"


def dumps(value: Any) -> bytes:
    """orjson.dumps, numpy arrays included."""
    return orjson.dumps(value, option=_NUMPY)


def _items(column: np.ndarray) -> list[bytes]:
    """Each element of a 1-d column as JSON (NaN -> null)."""
    if not len(column):
        return []
    return dumps(np.ascontiguousarray(column))[1:-1].split(b",")


def points(curve: Curve, rows: np.ndarray | None = None) -> bytes:
    """The JSON array of the curve's points (CurvePoint objects), all of them or those at `rows`."""
    take = (lambda a: a) if rows is None else (lambda a: a[rows])
    chosen = range(len(curve)) if rows is None else rows.tolist()
    flags = [dumps(curve.flags[i]) if i in curve.flags else _EMPTY for i in chosen] if curve.flags else None
    columns = [_items(take(curve.epoch))] + [_items(take(curve.columns[f])) for f in FIELDS]
    columns.append(flags or [_EMPTY] * len(columns[0]))
    return b"[" + b",".join(map(_POINT.__mod__, zip(*columns, strict=True))) + b"]"


def epoch_stats(stats: EpochColumns) -> bytes:
    """The JSON array of a replicate group's EpochStat objects."""
    columns = [_items(stats.epoch), _items(stats.n)]
    for f in CURVE_FIELDS:
        columns += [_items(stats.mean[f]), _items(stats.std[f])]
    return b"[" + b",".join(map(_STAT.__mod__, zip(*columns, strict=True))) + b"]"


def with_array(head: Mapping[str, Any], key: str, array: bytes) -> bytes:
    """`head` as a JSON object with one more member, `key`, whose value is the JSON array `array` (bytes)."""
    body = dumps(dict(head))
    return body[:-1] + (b"," if len(body) > 2 else b"") + dumps(key) + b":" + array + b"}"


def join(items: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"
