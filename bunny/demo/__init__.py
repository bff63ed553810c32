"""The out-of-the-box demo (`python -m bunny.demo`): a tiny Bunny trained on generated pictures of shapes."""
