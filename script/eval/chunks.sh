# Sourced by the multi-GPU evaluation scripts (GQA, VQAv2, SEED-Bench).
#
# answer_in_chunks DIR ARGS...: run `python -m bunny.eval.model_vqa_loader ARGS...` once per GPU listed
# in CUDA_VISIBLE_DEVICES (default 0; on a machine without GPUs, one process on the CPU), each on its
# chunk of the questions (--num-chunks <#GPUs> --chunk-idx <i>, answers in DIR/<#GPUs>_<i>.jsonl),
# wait for all of them, and concatenate the chunks in order into DIR/merge.jsonl. A failed chunk stops
# the script before anything is merged or scored.
answer_in_chunks() {
    dir=$1
    shift
    gpu_list=${CUDA_VISIBLE_DEVICES:-0}
    chunks=$(echo "$gpu_list" | awk -F',' '{print NF}')
    idx=0
    pids=""
    for gpu in $(echo "$gpu_list" | tr ',' ' '); do
        CUDA_VISIBLE_DEVICES=$gpu python -m bunny.eval.model_vqa_loader "$@" \
            --answers-file "$dir/${chunks}_${idx}.jsonl" \
            --num-chunks "$chunks" \
            --chunk-idx "$idx" &
        pids="$pids $!"
        idx=$((idx + 1))
    done
    for pid in $pids; do
        wait "$pid" || { echo "error: answering a chunk failed (see above); nothing merged" >&2; exit 1; }
    done
    : > "$dir/merge.jsonl"
    idx=0
    while [ "$idx" -lt "$chunks" ]; do
        cat "$dir/${chunks}_${idx}.jsonl" >> "$dir/merge.jsonl"
        idx=$((idx + 1))
    done
}
