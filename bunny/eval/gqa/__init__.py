"""GQA: convert answers into predictions and score them with the official metrics."""
