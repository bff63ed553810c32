#!/bin/bash
# SEED-Bench-1: answer on every GPU of CUDA_VISIBLE_DEVICES, merge, print the accuracy per question
# type and write the upload file. Video questions need their middle frames first:
# python -m bunny.eval.seed_bench.extract_video_frames
# Data: docs/evaluation.md; `python -m bunny.eval.prepare seedbench` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

. "$(dirname "$0")/../chunks.sh"

ANSWERS=./eval/seed-bench/answers/$TARGET_DIR
answer_in_chunks $ANSWERS \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --question-file ./eval/seed-bench/bunny-seed-bench.jsonl \
    --image-folder ./eval/seed-bench \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.seed_bench.convert_seed_for_submission \
    --annotation-file ./eval/seed-bench/SEED-Bench.json \
    --result-file $ANSWERS/merge.jsonl \
    --result-upload-file ./eval/seed-bench/answers_upload/$TARGET_DIR.jsonl
