"""VQAv2: convert merged answers into the EvalAI upload file."""
