"""Export Bunny checkpoints to the formats serving engines read: a native transformers Llava model
(vLLM, SGLang, TGI, lmms-eval) and GGUF (llama.cpp). Run as `python -m bunny.export --help`;
see docs/export.md."""
