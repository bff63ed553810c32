#!/bin/bash
# GQA test-dev balanced: answer on every GPU of CUDA_VISIBLE_DEVICES, merge, score with GQA's
# evaluation (run inside eval/gqa).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare gqa` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

. "$(dirname "$0")/../chunks.sh"

SPLIT=${SPLIT:-bunny_gqa_testdev_balanced}
GQADIR=./eval/gqa

answer_in_chunks ./eval/gqa/answers/$SPLIT/$TARGET_DIR \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --question-file ./eval/gqa/$SPLIT.jsonl \
    --image-folder ./eval/gqa/images \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.gqa.convert_gqa_for_eval \
    --src ./eval/gqa/answers/$SPLIT/$TARGET_DIR/merge.jsonl \
    --dst $GQADIR/testdev_balanced_predictions.json

cd $GQADIR
python -m bunny.eval.gqa.eval_gqa --tier testdev_balanced
