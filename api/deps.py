"""Request dependencies as Annotated aliases: session, settings, the caller's owner id, load-or-404, idempotency,
the checks of a request's quota, and the page cursor."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError
from lrlab import auth, idempotency
from lrlab.db import get_sessionmaker
from lrlab.models import LOCAL_OWNER, Advice, Dataset, Experiment, LrFinder, Pbt, Run
from lrlab.runs import offers, quotas, store
from lrlab.schemas.spec import DatasetRef, ModelSpec, RunSpec
from lrlab.settings import Settings, get_settings
from lrlab.uploads import records


def _session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `lrlab keys create` (not needed by `lrlab up`).")
OWNER_KEY = "lrlab.owner"  # in scope["state"]: the owner the gate (api/gate.py) found for the request's key


def authenticate(session: Session, authorization: str | None) -> str:
    """The owner of the `Authorization: Bearer <key>` given; 401 for none, another scheme, or an unknown or
    revoked key. Called by the gate before a body is read, and by `_owner` where no gate ran."""
    scheme, key = get_authorization_scheme_param(authorization)
    if not key or scheme.lower() != "bearer":
        error = ApiError(401, ["header", "authorization"], "missing API key: send Authorization: Bearer <key>")
    elif (owner := auth.owner_of(session, key)) is None:
        error = ApiError(401, ["header", "authorization"], "unknown or revoked API key")
    else:
        return owner
    error.type = "unauthorized"
    error.headers["WWW-Authenticate"] = "Bearer"
    raise error


def _owner(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],  # documents the scheme in OpenAPI
) -> str:
    if settings.auth == "disabled":
        return LOCAL_OWNER
    found = request.scope.get("state", {}).get(OWNER_KEY)
    return found if isinstance(found, str) else authenticate(session, request.headers.get("authorization"))


OwnerDep = Annotated[str, Depends(_owner)]


def _owned(model: Any, param: str, noun: str) -> Callable[..., Any]:
    """Load-or-404 by path id, scoped to the caller: another owner's object is a 404, never a 403."""

    def load(session: Session, owner: str, **path: str) -> Any:
        object_id = path[param]
        found = session.get(model, object_id)
        if found is None or found.owner != owner:
            raise ApiError(404, ["path", param], f"no {noun} {object_id}", "not_found")
        return found

    # The path parameter's name differs per resource, so the signature FastAPI reads is built here.
    kind = inspect.Parameter.KEYWORD_ONLY
    load.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("session", kind, annotation=SessionDep),
            inspect.Parameter("owner", kind, annotation=OwnerDep),
            inspect.Parameter(param, kind, annotation=Annotated[str, Path(description=f"The {noun}'s id.")]),
        ]
    )
    return load


RunDep = Annotated[Run, Depends(_owned(Run, "run_id", "run"))]
ExperimentDep = Annotated[Experiment, Depends(_owned(Experiment, "experiment_id", "experiment"))]
LrFinderDep = Annotated[LrFinder, Depends(_owned(LrFinder, "job_id", "lr-finder job"))]
DatasetDep = Annotated[Dataset, Depends(_owned(Dataset, "dataset_id", "dataset"))]
PbtDep = Annotated[Pbt, Depends(_owned(Pbt, "pbt_id", "population"))]
AdviceDep = Annotated[Advice, Depends(_owned(Advice, "advice_id", "advice"))]


class Idempotent:
    """The Idempotency-Key of one POST: replay a remembered response, or remember the one being made."""

    def __init__(self, key: str | None, fingerprint: str, owner: str, ttl_hours: float) -> None:
        self.key, self.fingerprint, self.owner, self.ttl_hours = key, fingerprint, owner, ttl_hours

    def replay(self, session: Session) -> JSONResponse | None:
        if self.key is None:
            return None
        record = idempotency.lookup(session, self.owner, self.key, self.ttl_hours)
        if record is None:
            return None
        if record.fingerprint != self.fingerprint:
            raise ApiError(
                409, ["header", "idempotency-key"], "this Idempotency-Key was used with a different request", "conflict"
            )
        headers = {"Location": record.location, "Idempotent-Replayed": "true"} if record.location else {}
        return JSONResponse(record.body, status_code=record.status_code, headers=headers)

    def commit(
        self, session: Session, status_code: int, body: dict[str, Any], location: str | None
    ) -> JSONResponse | None:
        """Commit the work with its record; if a concurrent twin won the race, roll back and replay the twin's."""
        if self.key is not None:
            idempotency.remember(
                session, self.owner, self.key, self.fingerprint, status_code, body, location, self.ttl_hours
            )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            replayed = self.replay(session)
            if replayed is None:
                raise
            return replayed
        return None


async def _idempotent(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=200, description="Repeat a POST safely: same key and body, same answer."),
    ] = None,
) -> Idempotent:
    body = await request.body()
    fp = idempotency.fingerprint(request.method, request.url.path, body)
    return Idempotent(idempotency_key, fp, owner, settings.idempotency_ttl_hours)


IdempotentDep = Annotated[Idempotent, Depends(_idempotent)]


class Quota:
    """What a request's runs name and ask for: uploaded datasets that are the caller's own (404 otherwise, as for
    any other owner's object), and the owner's limits (429 with Retry-After). On success the owner's quota lock
    is held until the request's commit: insert the runs before it. check_models: models and datasets some live
    worker offers, layer lists that fit their data (422 otherwise)."""

    def __init__(self, session: Session, owner: str, settings: Settings) -> None:
        self.session, self.owner, self.settings = session, owner, settings

    def check_runs(self, specs: list[RunSpec], at: Sequence[str] = ("body",), *, jobs: int = 0) -> None:
        """`at` is where the specs' fields sit in the body: ("body",) for a run, ("body", "base") for a grid;
        `jobs`: lr-finder jobs the request adds besides its runs."""
        self._check_datasets([s.dataset for s in specs], at)
        try:
            quotas.check_runs(self.session, self.owner, specs, self.settings, jobs=jobs)
        except quotas.QuotaExceeded as exc:
            raise _over_quota(exc) from exc

    def check_job(self, dataset: DatasetRef) -> None:
        """An lr-finder job counts as one active run."""
        self._check_datasets([dataset], ("body",))
        try:
            quotas.check_active(self.session, self.owner, 1, self.settings)
        except quotas.QuotaExceeded as exc:
            raise _over_quota(exc) from exc

    def check_models(
        self,
        pairs: Sequence[tuple[DatasetRef, ModelSpec]],
        at: Sequence[str] = ("body",),
        axes: Sequence[str] = (),
        axes_at: Sequence[str] = ("body", "grid"),
    ) -> None:
        """(dataset, model) of each spec; `at` as check_runs'. `axes`: the dotted keys that vary the specs (a grid's
        axes, a search's space keys): a problem in the field a key sets is reported at the key (`axes_at`.<key>:
        body.grid.<axis>, body.space.<key>), any other at the base's field."""
        try:
            offers.check_models(self.session, self.owner, pairs, self.settings)
        except offers.SpecProblem as exc:
            dotted = ".".join(map(str, exc.loc))
            axis = next((a for a in axes if dotted == a or dotted.startswith(a + ".")), None)
            raise ApiError(422, [*axes_at, axis] if axis else [*at, *exc.loc], exc.msg) from exc

    def _check_datasets(self, refs: Sequence[DatasetRef], at: Sequence[str]) -> None:
        try:
            records.owned(self.session, self.owner, [ref.id for ref in refs if ref.id is not None])
        except records.UnknownDataset as exc:
            raise ApiError(404, [*at, "dataset", "id"], str(exc), "not_found") from exc


def _over_quota(exc: quotas.QuotaExceeded) -> ApiError:
    error = ApiError(429, ["body"], str(exc), "quota_exceeded")
    error.headers["Retry-After"] = str(exc.retry_after)
    return error


def _quota(session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> Quota:
    return Quota(session, owner, settings)


QuotaDep = Annotated[Quota, Depends(_quota)]


def _cursor(
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> str | None:
    """A cursor this API made (a zoned timestamp and an id), or a 422: never a 500 from the query it builds."""
    if cursor is None:
        return None
    try:
        created_at, row_id = store.decode_cursor(cursor)
    except ValueError:
        created_at, row_id = None, ""
    if created_at is None or created_at.tzinfo is None or "\x00" in row_id:
        raise ApiError(422, ["query", "cursor"], "not a cursor returned by this API: pass back `next_cursor`")
    return cursor


CursorDep = Annotated[str | None, Depends(_cursor)]


def walk(dependant: Dependant) -> list[Dependant]:
    """A route's dependant and all it depends on, however deep."""
    found, stack = [], [dependant]
    while stack:
        found.append(stack.pop())
        stack.extend(found[-1].dependencies)
    return found


def _calls(dependant: Dependant) -> set[Any]:
    return {d.call for d in walk(dependant)}


def requires_key(dependant: Dependant) -> bool:
    """Whether a route needs the caller's key: it depends, however deep, on the owner."""
    return _owner in _calls(dependant)


def uses_store(dependant: Dependant) -> bool:
    """Whether a route reads the database (a 503 when it is down): a session, or a key to look up."""
    return bool({_session, _owner} & _calls(dependant))


def is_idempotent(dependant: Dependant) -> bool:
    """Whether a route honours Idempotency-Key (a 409 when one is reused with another body)."""
    return _idempotent in _calls(dependant)
