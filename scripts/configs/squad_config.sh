#!/usr/bin/env bash
# Presets for scripts/run_squad.sh: each function echoes the first positional arguments
# (init_checkpoint .. OUT_DIR: 11 for the current presets, 10 in NVIDIA's 2020 order for the
# 2020 ones); append mode, CONFIG_FILE and max_steps when needed. Use:
#   source scripts/configs/squad_config.sh
#   bash scripts/run_squad.sh $(dgxa100-80g_8gpu_fp16) "train eval" bert_configs/large.json
# GPU presets are NVIDIA's, every one of both generations, with NVIDIA's values (paths: this
# checkout, /workspace/bert in bertforge's image). The CPU preset fine-tunes the checkpoint in
# $INIT_CHECKPOINT (default results/checkpoints/ckpt_final.pt) on the SQuAD files in
# $SQUAD_DIR with one process, small batches and bf16 where the CPU supports it.

_squad_args() {  # the 11 arguments from named variables (one place for the order)
    echo "$init_checkpoint $epochs $batch_size $learning_rate $warmup_proportion $precision" \
         "$num_gpu $seed $squad_dir $vocab_file $OUT_DIR"
}

_squad_args_2020() {  # NVIDIA's 2020 order: 10 arguments, no warmup_proportion
    echo "$init_checkpoint $epochs $batch_size $learning_rate $precision" \
         "$num_gpu $seed $squad_dir $vocab_file $OUT_DIR"
}

_squad_gpu_common() {  # paths: this checkout (/workspace/bert in bertforge's image)
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    init_checkpoint="$repo/checkpoints/bert_uncased.pt"
    epochs="2.0" batch_size="32" learning_rate="4.6e-5" warmup_proportion="0.2"
    num_gpu="8" seed="1"
    squad_dir="$BERT_PREP_WORKING_DIR/download/squad/v1.1"
    vocab_file="$BERT_PREP_WORKING_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
    OUT_DIR="$repo/results/SQuAD"
}

# NVIDIA's current presets.
dgxa100-80g_8gpu_fp16() { _squad_gpu_common; precision="fp16"; _squad_args; }
dgxa100-80g_8gpu_tf32() { _squad_gpu_common; precision="tf32"; _squad_args; }
dgx1-32g_8gpu_fp16() { _squad_gpu_common; precision="fp16"; _squad_args; }
dgx1-32g_8gpu_fp32() { _squad_gpu_common; precision="fp32" batch_size="16"; _squad_args; }
# NVIDIA's 2020 presets (run_squad.sh takes their order too). dgx2_16gpu_fp32 echoes fp16, as
# NVIDIA's does.
_squad_2020() { _squad_gpu_common; learning_rate="3e-5" precision=$1 num_gpu=$2 batch_size=$3; _squad_args_2020; }
dgxa100_8gpu_fp16() { _squad_2020 fp16 8 32; }
dgxa100_8gpu_tf32() { _squad_2020 tf32 8 16; }
dgx2_16gpu_fp16() { _squad_2020 fp16 16 16; }
dgx2_16gpu_fp32() { _squad_2020 fp16 16 8; }
dgx1_8gpu_fp16() { _squad_2020 fp16 8 10; }
dgx1_8gpu_fp32() { _squad_2020 fp32 8 4; }
# bf16 (ours).
dgxa100-80g_8gpu_bf16() { _squad_gpu_common; precision="bf16"; _squad_args; }

cpu_1proc() {
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    init_checkpoint=${INIT_CHECKPOINT:-$repo/results/checkpoints/ckpt_final.pt}
    epochs="1.0" batch_size="16" learning_rate="5e-5" warmup_proportion="0.1"
    precision="fp32" num_gpu="1" seed="1"
    squad_dir=${SQUAD_DIR:-${BERT_PREP_WORKING_DIR:-$repo/results/data}/download/squad/v1.1}
    vocab_file=${VOCAB_FILE:-${BERT_PREP_WORKING_DIR:-$repo/results/data}/vocab.txt}
    OUT_DIR="$repo/results/SQuAD"
    _squad_args
}
