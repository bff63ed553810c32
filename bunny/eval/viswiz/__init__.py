"""VizWiz: convert answers into the EvalAI upload file."""
