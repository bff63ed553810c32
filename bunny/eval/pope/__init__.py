"""POPE: object-hallucination accuracy, precision, recall, F1 and yes ratio per sampling strategy."""
