"""Uploaded datasets: archives read safely (archives.py) and their rows in the database (records.py)."""
