#!/bin/bash
# CMMMU: answer the split's questions; the val split is scored here.
# Data: docs/evaluation.md; `python -m bunny.eval.prepare cmmmu` builds the question file.
# LoRA checkpoints: MODEL_BASE is the base LLM the adapter was trained on.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-lora-$MODEL_TYPE}
MODEL_BASE=${MODEL_BASE:-/path/to/base_llm_model}
CONV_MODE=${CONV_MODE:-bunny}

SPLIT=${SPLIT:-val}

python -m bunny.eval.model_vqa_cmmmu \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-base $MODEL_BASE \
    --model-type $MODEL_TYPE \
    --conv-mode $CONV_MODE \
    --data-path ./eval/cmmmu/CMMMU \
    --config-path ./eval/cmmmu/prompt.yaml \
    --output-path ./eval/cmmmu/answers_upload/$SPLIT/$TARGET_DIR.jsonl \
    --split $SPLIT

if [ "$SPLIT" = val ]; then
    python -m bunny.eval.cmmmu.eval_script \
        --output_path ./eval/cmmmu/answers_upload/$SPLIT/$TARGET_DIR.jsonl \
        --data_path ./eval/cmmmu/cmmmu-data-val-answer.jsonl
fi
