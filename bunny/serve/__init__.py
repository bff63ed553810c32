"""Serving tools: the terminal chat (`python -m bunny.serve.cli`) and the web demo's controller,
model workers and Gradio server."""
