#!/bin/bash
# MMBench / MMBench-CN: answer the TSV's questions, write the xlsx to upload to the MMBench server.
# SPLIT: MMBench_DEV_EN_legacy, MMBench_TEST_EN_legacy (LANG=en), MMBench_DEV_CN_legacy,
# MMBench_TEST_CN_legacy (LANG=cn).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare mmbench` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

SPLIT=${SPLIT:-MMBench_DEV_EN_legacy}
LANG=${LANG:-en}
case $LANG in en|cn) ;; *) LANG=en ;; esac  # a locale name in the environment is not a benchmark language

python -m bunny.eval.model_vqa_mmbench \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --question-file ./eval/mmbench/$SPLIT.tsv \
    --answers-file ./eval/mmbench/answers/$SPLIT/$TARGET_DIR.jsonl \
    --lang $LANG \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode $CONV_MODE

mkdir -p ./eval/mmbench/answers_upload/$SPLIT

python -m bunny.eval.mmbench.convert_mmbench_for_submission \
    --annotation-file ./eval/mmbench/$SPLIT.tsv \
    --result-dir ./eval/mmbench/answers/$SPLIT \
    --upload-dir ./eval/mmbench/answers_upload/$SPLIT \
    --experiment $TARGET_DIR
