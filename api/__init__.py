"""The HTTP API: FastAPI app, routers, dependencies, error handlers. Never imports torch or trainer."""
