#!/bin/bash
# POPE (COCO, adversarial / popular / random): answer and print the scores per category; the
# reported number is the average F1.
# Data: docs/evaluation.md; `python -m bunny.eval.prepare pope` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa_loader \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --question-file ./eval/pope/bunny_pope_test.jsonl \
    --image-folder ./eval/pope/val2014 \
    --answers-file ./eval/pope/answers/$TARGET_DIR.jsonl \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.pope.eval_pope \
    --annotation-dir ./eval/pope/coco \
    --question-file ./eval/pope/bunny_pope_test.jsonl \
    --result-file ./eval/pope/answers/$TARGET_DIR.jsonl
