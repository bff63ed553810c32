#!/bin/bash
# MME: answer with the loader, convert the answers to MME's layout, print the Perception and
# Cognition scores (also saved in eval/mme/answers_upload/$TARGET_DIR/res.txt).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare mme` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa_loader \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --question-file ./eval/mme/bunny_mme.jsonl \
    --image-folder ./eval/mme/MME_Benchmark_release_version \
    --answers-file ./eval/mme/answers/$TARGET_DIR.jsonl \
    --temperature 0 \
    --conv-mode $CONV_MODE

cd ./eval/mme

python -m bunny.eval.mme.convert_answer_to_mme --experiment $TARGET_DIR

python -m bunny.eval.mme.calculation_mme --results_dir answers_upload/$TARGET_DIR > answers_upload/$TARGET_DIR/res.txt
cat answers_upload/$TARGET_DIR/res.txt
