"""Advice: "which optimizer, which learning rate?" answered by one request. plan.py is the method (pure),
pipeline.py the state machine in the database, views.py what GET /v1/advice/{id} reads back."""
