#!/usr/bin/env bash
# Presets for scripts/run_pretraining.sh: each function echoes NVIDIA's 32 positional
# arguments, in order. Use:
#   source scripts/configs/pretrain_config.sh
#   bash scripts/run_pretraining.sh $(cpu_tiny_1proc)
# CPU presets take their data from $BERT_PREP_WORKING_DIR (default results/data, written by
# `bash data/create_datasets_from_start.sh sample`) and run in minutes on a laptop.
# GPU presets are NVIDIA's, every one of both generations (current: dgxa100-80g_8gpu_fp16/tf32,
# dgx1-32g_8gpu_fp16/fp32; 2020: dgxa100_8gpu_fp16/tf32, dgx2_16gpu_fp16/fp32,
# dgx1_8gpu_fp16/fp32), with NVIDIA's values (tests/nvidia/presets.json).

_pretrain_args() {  # the 32 arguments from named variables (one place for the order)
    echo "$train_batch_size $learning_rate $precision $num_gpus $warmup_proportion $train_steps" \
         "$save_checkpoint_steps $resume_training $create_logfile $accumulate_gradients" \
         "$gradient_accumulation_steps $seed $job_name $allreduce_post_accumulation" \
         "$allreduce_post_accumulation_fp16 $train_batch_size_phase2 $learning_rate_phase2" \
         "$warmup_proportion_phase2 $train_steps_phase2 $gradient_accumulation_steps_phase2" \
         "$DATA_DIR_PHASE1 $DATA_DIR_PHASE2 $CODEDIR $init_checkpoint $wikipedia_source" \
         "$num_dask_workers $num_shards_per_worker $num_workers $sample_ratio $phase2_bin_size" \
         "$masking $BERT_CONFIG"
}

_cpu_common() {
    local repo prep
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    prep=${BERT_PREP_WORKING_DIR:-$repo/results/data}
    train_batch_size=32 learning_rate=1e-3 precision=fp32 num_gpus=1 warmup_proportion=0.1
    train_steps=200 save_checkpoint_steps=50 resume_training=false create_logfile=false
    accumulate_gradients=true gradient_accumulation_steps=2 seed=12439
    job_name=bert_cpu_pretraining allreduce_post_accumulation=true
    allreduce_post_accumulation_fp16=false train_batch_size_phase2=8 learning_rate_phase2=5e-4
    warmup_proportion_phase2=0.1 train_steps_phase2=20 gradient_accumulation_steps_phase2=2
    DATA_DIR_PHASE1=$prep/phase1_hdf5 DATA_DIR_PHASE2=$prep/phase2_parquet CODEDIR=$repo
    init_checkpoint=None wikipedia_source=$prep/text/train num_dask_workers=$(nproc)
    num_shards_per_worker=1 num_workers=0 sample_ratio=1.0 phase2_bin_size=64 masking=static
    BERT_CONFIG=$repo/bert_configs/tiny.json
}

# Tiny BERT (2 layers, hidden 128), one CPU process: ~10 minutes on 2 cores.
cpu_tiny_1proc() { _cpu_common; _pretrain_args; }

# The same on 2 CPU processes (torchrun, gloo): half the batch per rank, same global batch.
cpu_tiny_2proc() { _cpu_common; num_gpus=2 train_batch_size=16 train_batch_size_phase2=4; _pretrain_args; }

# A smoke test: a few steps of each phase (seconds).
cpu_smoke() {
    _cpu_common
    train_batch_size=8 train_steps=6 save_checkpoint_steps=3 train_batch_size_phase2=4
    train_steps_phase2=3 gradient_accumulation_steps_phase2=1
    _pretrain_args
}

# Small BERT (4 layers, hidden 256) on CPU, bf16 autocast where the CPU has bf16.
cpu_small_bf16() { _cpu_common; precision=bf16 BERT_CONFIG=$CODEDIR/bert_configs/small.json; _pretrain_args; }

# NVIDIA's BERT-large recipe (LAMB, global batch 65536 then 32768), the values every NVIDIA
# preset shares; each preset below sets what differs: GPUs, precision, batch and accumulation.
# Paths are this checkout's (CODEDIR; /workspace/bert in bertforge's image) and the layout
# data/create_datasets_from_start.sh writes in $BERT_PREP_WORKING_DIR (docs/nvidia.md).
_nvidia_large() {
    local repo prep
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    prep=${BERT_PREP_WORKING_DIR:-$repo/results/data}
    learning_rate=6e-3 warmup_proportion=0.2843 train_steps=7038
    save_checkpoint_steps=200 resume_training=false create_logfile=true accumulate_gradients=true
    seed=42 job_name=bert_lamb_pretraining allreduce_post_accumulation=true
    learning_rate_phase2=4e-3 warmup_proportion_phase2=0.128 train_steps_phase2=1563
    DATA_DIR_PHASE1=$prep/phase1_hdf5 DATA_DIR_PHASE2=$prep/phase2_parquet
    CODEDIR=$repo init_checkpoint=None wikipedia_source=$prep/text/train num_dask_workers=128
    num_shards_per_worker=128 num_workers=4 sample_ratio=0.9 phase2_bin_size=64 masking=static
    BERT_CONFIG=$repo/bert_configs/large.json
}

_nvidia() {  # num_gpus precision batch accumulation batch_phase2 accumulation_phase2
    _nvidia_large
    num_gpus=$1 precision=$2 train_batch_size=$3 gradient_accumulation_steps=$4
    train_batch_size_phase2=$5 gradient_accumulation_steps_phase2=$6
    allreduce_post_accumulation_fp16=false
    [[ $precision == fp16 ]] && allreduce_post_accumulation_fp16=true
    _pretrain_args
}

# NVIDIA's current presets (DGX A100 80GB and DGX-1 32GB, 8 GPUs).
dgxa100-80g_8gpu_fp16() { _nvidia 8 fp16 8192 32 4096 128; }
dgxa100-80g_8gpu_tf32() { _nvidia 8 tf32 8192 64 4096 256; }
dgx1-32g_8gpu_fp16() { _nvidia 8 fp16 8192 64 4096 256; }
dgx1-32g_8gpu_fp32() { _nvidia 8 fp32 8192 128 4096 512; }
# NVIDIA's 2020 presets (DGX A100 40GB, DGX-2H 16x V100 32GB, DGX-1 8x V100 16GB).
dgxa100_8gpu_fp16() { _nvidia 8 fp16 8192 128 4096 256; }
dgxa100_8gpu_tf32() { _nvidia 8 tf32 8192 128 4096 512; }
dgx2_16gpu_fp16() { _nvidia 16 fp16 4096 64 2048 128; }
dgx2_16gpu_fp32() { _nvidia 16 fp32 4096 128 2048 256; }
dgx1_8gpu_fp16() { _nvidia 8 fp16 8192 512 4096 512; }
dgx1_8gpu_fp32() { _nvidia 8 fp32 8192 1024 4096 1024; }
# bf16 (ours): NVIDIA's fp16 settings with bf16 autocast (no loss scaling, no fp16 all-reduce).
dgxa100-80g_8gpu_bf16() { _nvidia 8 bf16 8192 32 4096 128; }
dgxa100_8gpu_bf16() { _nvidia 8 bf16 8192 128 4096 256; }
