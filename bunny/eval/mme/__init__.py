"""MME: turn answers into the per-task result files and compute the Perception and Cognition scores."""
