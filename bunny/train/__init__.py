"""Training: arguments, the entry point (train.py), the Trainer subclass and what trains when."""
