"""The HTTP edge: what a request must pass before FastAPI reads it.

In order: the API key (401), text in the path and query (a NUL names nothing: 404 in a path, 422 in a query),
the body's Content-Type on JSON endpoints (415), its size on every endpoint but the upload (413), and the JSON
text itself (422 for a NUL or a lone UTF-16 surrogate, which no column can store). The first three are decided
from the headers alone: a refused request's body is never read into memory. It is drained, though, up to a
bound and discarded, so that a client still sending it reads the answer rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import fastapi.routing
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from api import deps
from api.errors import DATABASE_ERRORS, ApiError, database_down, method_not_allowed
from lrlab.db import get_sessionmaker
from lrlab.settings import get_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_BYTES = 8 << 20  # a refused body up to this size is read and discarded before the answer
DRAIN_SECONDS = 10.0
JSON_TYPE = re.compile(r"^application/(json|[^;\s]+\+json)\s*(;|$)", re.IGNORECASE)
# \u0000 or a \uD800-\uDFFF escape: only then is the JSON parsed here, to find where (pairs are fine)
SUSPECT_ESCAPE = re.compile(rb"\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class RouteFacts:
    needs_key: bool
    body: Literal["json", "own", "none"]  # own: the route parses its body itself, with its own limits (uploads)
    query: frozenset[str]


def facts(route: Any) -> RouteFacts:
    """What the gate needs to know about a route, read from its dependencies."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:  # docs, static files: public and bodiless
        return RouteFacts(needs_key=False, body="none", query=frozenset())
    every = deps.walk(dependant)
    own = "requestBody" in (getattr(route, "openapi_extra", None) or {})
    json_body = any(d.body_params for d in every)
    body: Literal["json", "own", "none"] = "json" if json_body else "own" if own else "none"
    query = frozenset(p.alias for d in every for p in d.query_params)
    return RouteFacts(deps.requires_key(dependant), body, query)


def bad_char(text: str) -> str | None:
    """Why no stored text can hold this string, or None."""
    found = BAD_CHAR.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000)"
    return f"contains a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), which is not a character"


def bad_json_text(body: bytes) -> ApiError | None:
    """A 422 at the first string (key or value) of a JSON body holding a NUL or a lone surrogate."""
    if SUSPECT_ESCAPE.search(body) is None:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: FastAPI's parser says so, with the position
    stack: list[tuple[Any, list[str | int]]] = [(value, ["body"])]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str) and (why := bad_char(item)):
            return ApiError(422, loc, f"text {why}", "invalid_text")
        if isinstance(item, dict):
            for key, inner in item.items():
                if why := bad_char(key):
                    return ApiError(422, [*loc, key], f"a key {why}", "invalid_text")
                stack.append((inner, [*loc, key]))
        elif isinstance(item, list):
            stack.extend((inner, [*loc, i]) for i, inner in enumerate(item))
    return None


class Body:
    """The request body as it arrives: read under a cap, replayed to the app, or drained and dropped."""

    def __init__(self, receive: Receive, headers: dict[str, str]) -> None:
        self.receive = receive
        self.declared = int(headers["content-length"]) if headers.get("content-length", "").isdigit() else None
        # HTTP/1.1: a body comes with a non-zero Content-Length or with Transfer-Encoding (chunked)
        self.present = bool(self.declared) or ("transfer-encoding" in headers and self.declared is None)
        self.expects_continue = headers.get("expect", "").lower() == "100-continue"
        self.done = not self.present
        self.seen = 0

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] != "http.request":
            self.done = True
            return b""
        self.done = not message.get("more_body", False)
        chunk: bytes = message.get("body", b"")
        self.seen += len(chunk)
        return chunk

    async def read(self, limit: int) -> bytes:
        """The whole body, or a 413 as soon as it passes `limit` bytes."""
        chunks = []
        while not self.done:
            chunks.append(await self._next())
            if self.seen > limit:
                raise too_large(limit)
        return b"".join(chunks)

    async def drain(self) -> None:
        """Read and drop what is left, within bounds; a client waiting for 100-continue is never asked to send."""
        if self.done or (self.expects_continue and self.seen == 0):
            return
        if self.declared is not None and self.declared > DRAIN_BYTES:
            return  # the connection closes after the answer: cheaper than reading it all
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self.done and self.seen <= DRAIN_BYTES:
                    await self._next()
        except TimeoutError:
            pass

    def replay(self, body: bytes) -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await self.receive()  # http.disconnect, when it comes

        return receive


def too_large(limit: int) -> ApiError:
    return ApiError(413, ["body"], f"request body over {limit} bytes (LRLAB_MAX_JSON_BODY_BYTES)", "too_large")


def flat_routes(app: Any) -> list[Any]:
    """The app's routes, included routers flattened (FastAPI >= 0.160 keeps them nested; older ones don't)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(flatten(app.router.routes)) if flatten else list(app.router.routes)


# per app: (its number of routes when read, each route with its facts), read again if routes are added
_tables: weakref.WeakKeyDictionary[Any, tuple[int, list[tuple[Any, RouteFacts]]]] = weakref.WeakKeyDictionary()


def route_table(app: Any) -> list[tuple[Any, RouteFacts]]:
    count = len(app.router.routes)
    table = _tables.get(app)
    if table is None or table[0] != count:
        table = _tables[app] = (count, [(route, facts(route)) for route in flat_routes(app)])
    return table[1]


@dataclass
class Found:
    route: Any  # the first full match, as the router picks; else the first partial one (a 405), else None
    facts: RouteFacts | None
    path_params: dict[str, Any]
    allowed: list[str]  # with no full match: every method the routes at this path accept


def _route(scope: Scope) -> Found:
    """Starlette's own 405 names only the first partial route's methods: the gate answers it, naming all."""
    partial, allowed = None, set()
    for route, route_facts in route_table(scope["app"]):
        match, child = route.matches(scope)
        if match is Match.FULL:
            return Found(route, route_facts, child.get("path_params", {}), [])
        if match is Match.PARTIAL and getattr(route, "methods", None):
            partial = partial or route
            allowed |= route.methods
    return Found(partial, None, {}, sorted(allowed))


def _lookup_owner(authorization: str | None) -> str:
    with get_sessionmaker()() as session:
        return deps.authenticate(session, authorization)


def _check_url(scope: Scope, path_params: dict[str, Any], query_names: frozenset[str]) -> None:
    for name, value in path_params.items():
        if isinstance(value, str) and bad_char(value):
            raise ApiError(404, ["path", name], f"no object has this {name}: it {bad_char(value)}", "not_found")
    if not query_names:
        return
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if name in query_names and (why := bad_char(value)):
            raise ApiError(422, ["query", name], f"text {why}", "invalid_text")


def _check_content_type(headers: dict[str, str]) -> None:
    given = headers.get("content-type")
    if given is None:
        msg = "a body needs Content-Type: application/json"
    elif JSON_TYPE.match(given.strip()) is None:
        msg = f"send the body as application/json, not {given.split(';')[0].strip()[:100]!r}"
    else:
        return
    raise ApiError(415, ["header", "content-type"], msg, "unsupported_media_type")


class Gate:
    """ASGI middleware in front of the app: see the module docstring for what it checks and in which order."""

    def __init__(self, app: App, max_json_bytes: Callable[[], int]) -> None:
        self.app, self.max_json_bytes = app, max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = _route(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = Body(receive, headers)
        if found.route is None:
            await self.app(scope, receive, send)  # the router's 404, in the error shape (api/errors.py)
            return
        scope["route"] = getattr(found.route, "original_route", found.route)  # as the router sets it (metrics)
        route_facts = found.facts
        if route_facts is None:
            await self._answer(method_not_allowed(scope["method"], found.allowed), body, scope, send)
            return
        try:
            if route_facts.needs_key and get_settings().auth == "required":
                owner = await run_in_threadpool(_lookup_owner, headers.get("authorization"))
                scope.setdefault("state", {})[deps.OWNER_KEY] = owner
            _check_url(scope, found.path_params, route_facts.query)
            if body.present and route_facts.body != "own":
                receive = await self._read(body, headers, route_facts)
        except ApiError as refusal:
            await self._answer(refusal.response(), body, scope, send)
            return
        except DATABASE_ERRORS as exc:
            await self._answer(database_down(exc), body, scope, send)
            return
        await self.app(scope, receive, send)

    async def _read(self, body: Body, headers: dict[str, str], route_facts: RouteFacts) -> Receive:
        if route_facts.body == "json":
            _check_content_type(headers)
        limit = self.max_json_bytes()
        if body.declared is not None and body.declared > limit:
            raise too_large(limit)
        data = await body.read(limit)
        if route_facts.body == "json":
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                msg = f"JSON must be UTF-8: {exc.reason} at byte {exc.start}"
                raise ApiError(422, ["body"], msg, "json_invalid") from None
            if (refusal := bad_json_text(data)) is not None:
                raise refusal
        return body.replay(data)

    @staticmethod
    async def _answer(response: Any, body: Body, scope: Scope, send: Send) -> None:
        await body.drain()

        async def no_receive() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_receive, send)
