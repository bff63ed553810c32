#!/bin/sh
# Export a trained Bunny model for other engines (docs/export.md): a native transformers Llava
# directory (vLLM, SGLang, TGI, lmms-eval) and the llama.cpp pair (native LLM + mmproj GGUF).
# Set MODEL_TYPE / TARGET_DIR here or in the environment; MODEL_BASE for a LoRA output (its base
# LLM); DTYPE float16, bfloat16, float32 or auto (the checkpoint's own).
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
DTYPE=${DTYPE:-auto}

set -- --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR --model-type $MODEL_TYPE --dtype $DTYPE
if [ -n "$MODEL_BASE" ]; then
    set -- "$@" --model-base "$MODEL_BASE"
fi

python -m bunny.export "$@" --format hf-llava --output-dir ./exports/$TARGET_DIR-llava
python -m bunny.export "$@" --format gguf --output-dir ./exports/$TARGET_DIR-gguf

# Then, with llama.cpp (see docs/export.md):
#   python convert_hf_to_gguf.py ./exports/$TARGET_DIR-gguf --outtype f16 --outfile ./exports/$TARGET_DIR-gguf/model-f16.gguf
#   llama-mtmd-cli -m ./exports/$TARGET_DIR-gguf/model-f16.gguf --mmproj ./exports/$TARGET_DIR-gguf/mmproj-model-f16.gguf \
#       --image images/shapes.png -p "What is in the picture?"
