"""TextVQA: score answers with the soft VQA accuracy."""
