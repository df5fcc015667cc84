"""Searches that spend less: successive halving (asha.py) and Optuna studies driven by ask-and-tell (study.py)."""
