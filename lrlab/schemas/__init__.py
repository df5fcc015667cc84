"""Request and response schemas (pydantic only: no FastAPI, no torch), shared by api, worker and client."""

from lrlab.schemas.runs import CurvePoint, Curves, RunCreated, RunPublic, RunsPublic, RunStatus, RunSummary
from lrlab.schemas.spec import (
    OPTIMIZER_SCHEMAS,
    SCHEDULE_SCHEMAS,
    DatasetRef,
    DivergenceSpec,
    ModelSpec,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
)

__all__ = [
    "OPTIMIZER_SCHEMAS",
    "SCHEDULE_SCHEMAS",
    "CurvePoint",
    "Curves",
    "DatasetRef",
    "DivergenceSpec",
    "ModelSpec",
    "OptimizerSpec",
    "RunCreated",
    "RunPublic",
    "RunSpec",
    "RunStatus",
    "RunSummary",
    "RunsPublic",
    "ScheduleSpec",
]
