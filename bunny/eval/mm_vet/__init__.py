"""MM-Vet: convert answers into the input of the online GPT-4 evaluator."""
