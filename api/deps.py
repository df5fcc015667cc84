"""Request dependencies as Annotated aliases: settings, a database session, load-or-404 of a run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path
from sqlalchemy.orm import Session

from api.errors import ApiError
from lrlab.db import get_sessionmaker
from lrlab.models import Run
from lrlab.settings import Settings, get_settings


def _session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _run(session: SessionDep, run_id: Annotated[str, Path(description="The run's UUID.")]) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise ApiError(404, ["path", "run_id"], f"no run {run_id}", "not_found")
    return run


RunDep = Annotated[Run, Depends(_run)]
