"""The Celery worker: thin tasks that load rows, call the trainer and persist each epoch."""
