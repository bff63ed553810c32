"""Serving: HTTP and the web page on top of `bunny.inference` (the terminal chat, the controller, the
model workers with the OpenAI API, the Gradio page). Nothing outside this package imports it."""
