#!/bin/bash
# ScienceQA-IMG: answer the test split (questions with and without pictures) and score it; the
# reported number is IMG-Accuracy.
# Data: docs/evaluation.md; `python -m bunny.eval.prepare scienceqa` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa_science \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --question-file ./eval/scienceqa/bunny_test_CQM-A.json \
    --image-folder ./eval/scienceqa/test \
    --answers-file ./eval/scienceqa/answers/$TARGET_DIR.jsonl \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.scienceqa.eval_science_qa \
    --base-dir ./eval/scienceqa \
    --result-file ./eval/scienceqa/answers/$TARGET_DIR.jsonl \
    --output-file ./eval/scienceqa/answers/${TARGET_DIR}_output.jsonl \
    --output-result ./eval/scienceqa/answers/${TARGET_DIR}_result.json
