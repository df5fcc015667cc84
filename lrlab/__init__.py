"""lrlab: what the api and the worker share — settings, schemas, database, queue, the command."""

__version__ = "0.1.0"
