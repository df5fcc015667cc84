"""Population based training: the search policy (search.py), its rounds in the database (rounds.py) and the
checkpoint store every worker can reach (checkpoints.py)."""
