"""Evaluation: answer generators (`python -m bunny.eval.<module>`) that write answer files, and scorers."""
