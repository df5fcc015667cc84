"""Population based training: the search policy (search.py), the state machine of its rounds in the database
(rounds.py), what a population looks like from outside (views.py), and the checkpoint store every worker can
reach (checkpoints.py)."""
