#!/usr/bin/env bash
# BERT pretraining, phase 1 then phase 2, with NVIDIA's 32 positional arguments in NVIDIA's
# order (DeepLearningExamples PyTorch/LanguageModeling/BERT/scripts/run_pretraining.sh):
#
#   1 train_batch_size            17 learning_rate_phase2
#   2 learning_rate               18 warmup_proportion_phase2
#   3 precision fp16|bf16|tf32|fp32  19 train_steps_phase2
#   4 num_gpus (processes; CPU ok)   20 gradient_accumulation_steps_phase2
#   5 warmup_proportion           21 DATA_DIR_PHASE1
#   6 train_steps                 22 DATA_DIR_PHASE2
#   7 save_checkpoint_steps       23 CODEDIR (repo root; results go to CODEDIR/results)
#   8 resume_training true|false  24 init_checkpoint (None)
#   9 create_logfile true|false   25 wikipedia_source (text used when a data dir is empty)
#  10 accumulate_gradients        26 num_dask_workers (data-preparation processes)
#  11 gradient_accumulation_steps 27 num_shards_per_worker
#  12 seed                        28 num_workers (loader workers per rank)
#  13 job_name                    29 sample_ratio (fraction of wikipedia_source files used)
#  14 allreduce_post_accumulation 30 phase2_bin_size (32..512 or none)
#  15 allreduce_post_accumulation_fp16  31 masking static|dynamic
#  16 train_batch_size_phase2     32 BERT_CONFIG
#
# Presets: scripts/configs/pretrain_config.sh (e.g. `bash scripts/run_pretraining.sh
# $(source scripts/configs/pretrain_config.sh && cpu_tiny_1proc)`).
# Environment: PYTHON (default .venv/bin/python or python3), BERT_PREP_WORKING_DIR (default
# results/data, the layout of data/create_datasets_from_start.sh), VOCAB_FILE (default
# $BERT_PREP_WORKING_DIR/vocab.txt), RESULTS_DIR (default $CODEDIR/results), EXTRA_ARGS
# (appended to both phases' flags).
# DRY_RUN=1: print each phase's command and check it with one process (--dry_run: flags,
# data, vocab, config), train nothing and make no data.
# Exit status: 0 done; 75 stopped by SIGTERM after a checkpoint (rerun with
# resume_training=true); 2 bad arguments or data; else the failing phase's status.
# Without a GPU it runs on the CPU: one process with python, more with torchrun (gloo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
if (( $# == 0 )); then
    echo "run_pretraining.sh: no arguments: running its defaults (NVIDIA's BERT-large recipe, 8192 then 4096 sequences per GPU, fp16, as many processes as GPUs; the 32 arguments are listed at the top of this script)"
fi
dry=${DRY_RUN:-0}

train_batch_size=${1:-8192}
learning_rate=${2:-"6e-3"}
precision=${3:-"fp16"}
num_gpus=${4:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | wc -l) || echo 1)}
warmup_proportion=${5:-"0.2843"}
train_steps=${6:-7038}
save_checkpoint_steps=${7:-200}
resume_training=${8:-"false"}
create_logfile=${9:-"true"}
accumulate_gradients=${10:-"true"}
gradient_accumulation_steps=${11:-128}
seed=${12:-12439}
job_name=${13:-"bert_lamb_pretraining"}
allreduce_post_accumulation=${14:-"true"}
allreduce_post_accumulation_fp16=${15:-"true"}
train_batch_size_phase2=${16:-4096}
learning_rate_phase2=${17:-"4e-3"}
warmup_proportion_phase2=${18:-"0.128"}
train_steps_phase2=${19:-1563}
gradient_accumulation_steps_phase2=${20:-512}
# Defaults: the layout data/create_datasets_from_start.sh writes (BERT_PREP_WORKING_DIR=results/data).
prep=${BERT_PREP_WORKING_DIR:-$repo/results/data}
DATA_DIR_PHASE1=${21:-$prep/phase1_hdf5}
DATA_DIR_PHASE2=${22:-$prep/phase2_parquet}
CODEDIR=${23:-"$repo"}
init_checkpoint=${24:-"None"}
wikipedia_source=${25:-$prep/text/train}
num_dask_workers=${26:-$(nproc)}
num_shards_per_worker=${27:-128}
num_workers=${28:-4}
sample_ratio=${29:-0.9}
phase2_bin_size=${30:-64}
masking=${31:-static}
BERT_CONFIG=${32:-$CODEDIR/bert_configs/large.json}
num_nodes=1

die() { echo "run_pretraining.sh: error: $*" >&2; exit 2; }
is_true() { [[ $1 == true ]]; }
check_bool() { [[ $2 == true || $2 == false ]] || die "$1 must be true or false, got '$2'"; }
check_uint() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"; }

for v in resume_training create_logfile accumulate_gradients allreduce_post_accumulation \
         allreduce_post_accumulation_fp16; do check_bool "$v" "${!v}"; done
for v in num_gpus train_steps train_steps_phase2 save_checkpoint_steps gradient_accumulation_steps \
         gradient_accumulation_steps_phase2 num_dask_workers num_shards_per_worker num_workers; do
    check_uint "$v" "${!v}"
done
(( num_gpus >= 1 )) || die "num_gpus must be >= 1"
case $precision in fp16|bf16|tf32|fp32) ;; *) die "unknown precision '$precision' (fp16, bf16, tf32, fp32)";; esac
case $masking in static|dynamic) ;; *) die "masking=$masking not supported (static or dynamic)";; esac
[[ $phase2_bin_size == none || $phase2_bin_size =~ ^(32|64|128|256|512)$ ]] \
    || die "phase2_bin_size=$phase2_bin_size not supported (32, 64, 128, 256, 512, none)"

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $CODEDIR/.venv/bin/python ]]; then PYTHON=$CODEDIR/.venv/bin/python; else PYTHON=python3; fi
fi
VOCAB_FILE=${VOCAB_FILE:-$prep/vocab.txt}
RESULTS_DIR=${RESULTS_DIR:-$CODEDIR/results}
CHECKPOINTS_DIR=$RESULTS_DIR/checkpoints
mkdir -p "$CHECKPOINTS_DIR"
[[ -f $BERT_CONFIG ]] || die "BERT config file not found at $BERT_CONFIG"

# Shards for each (rank, loader worker), as NVIDIA computes them.
num_blocks=$(( num_shards_per_worker * (num_workers > 0 ? num_workers : 1) * num_nodes * num_gpus ))

# Make a phase's data from $wikipedia_source when its directory is missing or empty.
prepare_data() {  # phase data_dir seq_len max_pred
    local phase=$1 dir=$2 seq=$3 pred=$4
    if [[ -d $dir && -n $(ls -A "$dir" 2>/dev/null) ]]; then return 0; fi
    if [[ $dry == 1 ]]; then
        echo "DRY_RUN: $dir is missing or empty: phase $phase data would be made from $wikipedia_source"
        return 0
    fi
    echo "Warning! $dir directory missing: making phase $phase data from $wikipedia_source"
    [[ -e $wikipedia_source ]] || die "$wikipedia_source missing: cannot make the phase $phase data"
    [[ -f $VOCAB_FILE ]] || die "vocab file $VOCAB_FILE not found (set VOCAB_FILE)"
    local inputs=()
    if [[ -d $wikipedia_source ]]; then
        mapfile -t inputs < <(find "$wikipedia_source" -maxdepth 1 -type f \( -name '*.txt' -o -name '*.jsonl' \) | sort)
        (( ${#inputs[@]} > 0 )) || die "no .txt/.jsonl files in $wikipedia_source"
        # sample_ratio keeps that fraction of the source files (at least one), in name order.
        local keep
        keep=$(awk -v n="${#inputs[@]}" -v r="$sample_ratio" 'BEGIN { k = int(n * r + 0.5); if (k < 1) k = 1; if (k > n) k = n; print k }')
        inputs=("${inputs[@]:0:keep}")
    else
        inputs=("$wikipedia_source")
    fi
    local fmt=(--output_format parquet --masking "$( [[ $masking == static ]] && echo static || echo none )")
    [[ $phase == 2 && $phase2_bin_size != none ]] && fmt+=(--bin_size "$phase2_bin_size")
    "$PYTHON" "$CODEDIR/create_pretraining_data.py" --input_file "${inputs[@]}" --output_file "$dir" \
        --vocab_file "$VOCAB_FILE" --max_seq_length "$seq" --max_predictions_per_seq "$pred" \
        --num_shards "$num_blocks" --random_seed "$seed" --num_workers "$num_dask_workers" "${fmt[@]}"
}

# THE one place where positional arguments become run_pretraining.py flags.
phase_flags() {  # phase -> the flags of that phase, one per line
    local phase=$1
    local bs=$train_batch_size lr=$learning_rate wp=$warmup_proportion steps=$train_steps
    local ga=$gradient_accumulation_steps data=$DATA_DIR_PHASE1 seq=128 pred=20
    if [[ $phase == 2 ]]; then
        bs=$train_batch_size_phase2 lr=$learning_rate_phase2 wp=$warmup_proportion_phase2
        steps=$train_steps_phase2 ga=$gradient_accumulation_steps_phase2 data=$DATA_DIR_PHASE2
        seq=512 pred=80
    fi
    is_true "$accumulate_gradients" || ga=1
    printf '%s\n' "--input_dir=$data" "--output_dir=$CHECKPOINTS_DIR" "--config_file=$BERT_CONFIG" \
        "--vocab_file=$VOCAB_FILE" "--train_batch_size=$bs" "--max_seq_length=$seq" \
        "--max_predictions_per_seq=$pred" "--max_steps=$steps" "--warmup_proportion=$wp" \
        "--num_steps_per_checkpoint=$save_checkpoint_steps" "--learning_rate=$lr" "--seed=$seed" \
        "--gradient_accumulation_steps=$ga" "--masking=$masking" "--do_train" \
        "--json-summary=$RESULTS_DIR/dllogger.json" "--disable_progress_bar" "--num_workers=$num_workers"
    case $precision in fp16) echo --fp16 ;; bf16) echo --bf16 ;; tf32) echo --tf32 ;; esac
    if is_true "$allreduce_post_accumulation"; then echo --allreduce_post_accumulation
    else echo --no-allreduce_post_accumulation; fi
    is_true "$allreduce_post_accumulation_fp16" && [[ $precision == fp16 ]] && echo --allreduce_post_accumulation_fp16
    if [[ $phase == 1 ]]; then
        is_true "$resume_training" && echo --resume_from_checkpoint
        [[ $init_checkpoint != None ]] && echo "--init_checkpoint=$init_checkpoint"
    else
        printf '%s\n' --phase2 --resume_from_checkpoint "--phase1_end_step=$train_steps"
        is_true "$resume_training" && echo --resume_phase2
    fi
    return 0
}

launcher() {
    if (( num_gpus > 1 )) && [[ $dry != 1 ]]; then
        echo "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$num_gpus"
    else
        echo "$PYTHON"
    fi
}

run_phase() {  # phase
    local phase=$1 flags log="" rc=0
    mapfile -t flags < <(phase_flags "$phase")
    # shellcheck disable=SC2206  # EXTRA_ARGS is a list of flags by design
    flags+=(${EXTRA_ARGS:-})
    local cmd
    read -r -a cmd <<< "$(launcher)"
    cmd+=("$CODEDIR/run_pretraining.py" "${flags[@]}")
    if [[ $dry == 1 ]]; then
        local data=$DATA_DIR_PHASE1; [[ $phase == 2 ]] && data=$DATA_DIR_PHASE2
        echo "DRY_RUN: phase $phase would run on $num_gpus process(es): ${cmd[*]}"
        if [[ ! -d $data || -z $(ls -A "$data" 2>/dev/null) ]]; then return 0; fi
        "${cmd[@]}" --dry_run
        return
    fi
    if is_true "$create_logfile"; then
        local bs=$train_batch_size; [[ $phase == 2 ]] && bs=$train_batch_size_phase2
        log=$RESULTS_DIR/$job_name.pyt_bert_pretraining_phase${phase}_${precision}_gbs$(( bs * num_gpus )).$(date +%y%m%d%H%M%S).log
        echo "Logs written to $log"
    fi
    echo "+ ${cmd[*]}"
    if [[ -n $log ]]; then
        "${cmd[@]}" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    else
        "${cmd[@]}" || rc=$?
    fi
    return "$rc"
}

rc=0
prepare_data 1 "$DATA_DIR_PHASE1" 128 20
run_phase 1 || rc=$?
(( rc == 0 )) || { echo "phase 1 stopped with status $rc" >&2; exit "$rc"; }
echo "finished phase 1"
prepare_data 2 "$DATA_DIR_PHASE2" 512 80
run_phase 2 || rc=$?
(( rc == 0 )) || { echo "phase 2 stopped with status $rc" >&2; exit "$rc"; }
echo "finished phase 2"
