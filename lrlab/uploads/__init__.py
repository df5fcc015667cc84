"""Uploaded datasets: archives read safely (archives.py), the checks an upload passes before it is stored
(validation.py, torch-free: the api runs them, a worker unpacks with the same code), the content-addressed
blob store (blobs.py) and their rows in the database (records.py)."""
