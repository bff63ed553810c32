#!/bin/bash
# MMMU: answer the split's questions and write the prediction file; the validation split is scored
# here, the test split's file goes to the MMMU server (eval.ai).
# Data: docs/evaluation.md; `python -m bunny.eval.prepare mmmu` builds the question file.
# Set MODEL_TYPE / TARGET_DIR (and CONV_MODE: minicpm, phi3 or llama for those LLMs) here or in the
# environment. Runs on the GPUs of CUDA_VISIBLE_DEVICES, or on the CPU when there is none.
set -e

MODEL_TYPE=${MODEL_TYPE:-phi-2}
TARGET_DIR=${TARGET_DIR:-bunny-$MODEL_TYPE}
CONV_MODE=${CONV_MODE:-bunny}

SPLIT=${SPLIT:-test}

python -m bunny.eval.model_vqa_mmmu \
    --model-path ./checkpoints-$MODEL_TYPE/$TARGET_DIR \
    --model-type $MODEL_TYPE \
    --conv-mode $CONV_MODE \
    --data-path ./eval/mmmu/MMMU \
    --config-path ./eval/mmmu/config.yaml \
    --output-path ./eval/mmmu/answers_upload/$SPLIT/$TARGET_DIR.json \
    --split $SPLIT

if [ "$SPLIT" = validation ]; then
    python -m bunny.eval.mmmu.eval_mmmu \
        --output-path ./eval/mmmu/answers_upload/$SPLIT/$TARGET_DIR.json \
        --answer_path ./eval/mmmu/answer_dict_val.json
else
    echo "upload ./eval/mmmu/answers_upload/$SPLIT/$TARGET_DIR.json to the MMMU test server"
fi
