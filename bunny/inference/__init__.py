"""Inference: what every user of a loaded Bunny model needs, between `bunny.model` and the entry
points (the terminal chat, the model worker, `script/batch_inference.py`, the evaluation
generators).

- `options`: the model/generation flags and their checks;
- `prompts`: which template, and how a chat turn is added;
- `stops`: stop strings, the one implementation;
- `generate`: replies through `model.generate` (batched, left-padded);
- `engine`: continuously batched, streamed generation.

It never imports `bunny.serve`: serving is HTTP and a web page on top of this.
"""
