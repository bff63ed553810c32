#!/bin/bash
# VQAv2 test-dev: answer on every GPU of CUDA_VISIBLE_DEVICES, merge, write the upload file for the
# EvalAI server (eval/vqav2/answers_upload/$SPLIT/$TARGET_DIR.json).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare vqav2` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

. "$(dirname "$0")/../chunks.sh"

SPLIT=${SPLIT:-bunny_vqav2_mscoco_test-dev2015}

answer_in_chunks ./eval/vqav2/answers/$SPLIT/$TARGET_DIR \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --question-file ./eval/vqav2/$SPLIT.jsonl \
    --image-folder ./eval/vqav2/test2015 \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.vqav2.convert_vqav2_for_submission --split $SPLIT --ckpt $TARGET_DIR
