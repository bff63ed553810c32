#!/bin/bash
# VizWiz test: answer and write the file for the EvalAI server
# (eval/viswiz/answers_upload/$TARGET_DIR.json).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare vizwiz` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa_loader \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --question-file ./eval/viswiz/bunny_test.jsonl \
    --image-folder ./eval/viswiz/test \
    --answers-file ./eval/viswiz/answers/$TARGET_DIR.jsonl \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.viswiz.convert_viswiz_for_submission \
    --annotation-file ./eval/viswiz/bunny_test.jsonl \
    --result-file ./eval/viswiz/answers/$TARGET_DIR.jsonl \
    --result-upload-file ./eval/viswiz/answers_upload/$TARGET_DIR.json
