#!/bin/bash
# MM-Vet: answer and write the file for the GPT-4 evaluator
# (eval/mm-vet/answers_upload/$TARGET_DIR.json).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare mmvet` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --question-file ./eval/mm-vet/bunny-mm-vet.jsonl \
    --image-folder ./eval/mm-vet/images \
    --answers-file ./eval/mm-vet/answers/$TARGET_DIR.jsonl \
    --temperature 0 \
    --conv-mode $CONV_MODE

mkdir -p ./eval/mm-vet/answers_upload

python -m bunny.eval.mm_vet.convert_mmvet_for_eval \
    --src ./eval/mm-vet/answers/$TARGET_DIR.jsonl \
    --dst ./eval/mm-vet/answers_upload/$TARGET_DIR.json
