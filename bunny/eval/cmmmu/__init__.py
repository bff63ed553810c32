"""CMMMU: read the Hugging Face dataset in place, build the prompts, parse and score the answers."""
