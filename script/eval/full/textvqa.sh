#!/bin/bash
# TextVQA val (with OCR tokens in the prompt): answer and print the soft VQA accuracy.
# Data: docs/evaluation.md; `python -m bunny.eval.prepare textvqa` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

python -m bunny.eval.model_vqa_loader \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --question-file ./eval/textvqa/bunny_textvqa_val_v051_ocr.jsonl \
    --image-folder ./eval/textvqa/train_images \
    --answers-file ./eval/textvqa/answers/$TARGET_DIR.jsonl \
    --temperature 0 \
    --conv-mode $CONV_MODE

python -m bunny.eval.textvqa.eval_textvqa \
    --annotation-file ./eval/textvqa/TextVQA_0.5.1_val.json \
    --result-file ./eval/textvqa/answers/$TARGET_DIR.jsonl
