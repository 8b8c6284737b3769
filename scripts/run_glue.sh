#!/usr/bin/env bash
# GLUE fine-tuning / evaluation / prediction with NVIDIA's 16 positional arguments, in
# NVIDIA's order (DeepLearningExamples PyTorch/LanguageModeling/BERT/scripts/run_glue.sh):
#
#   1 init_checkpoint                  9 gradient_accumulation_steps
#   2 data_dir                         10 learning_rate
#   3 vocab_file (None: the HF         11 warmup_proportion
#     checkpoint directory's)          12 epochs
#   4 config_file (None: the           13 max_steps (-1: epochs decide)
#     checkpoint's own config)         14 precision fp16|bf16|tf32|fp32
#   5 out_dir                          15 seed
#   6 task_name                        16 mode: any of train, eval, prediction ("train eval")
#   7 num_gpu (processes; CPU ok)
#   8 batch_size
#
# Tasks: cola sst-2 mrpc sts-b qqp mnli mnli-mm qnli rte wnli.
# Presets: scripts/configs/glue_config.sh, e.g.
#   bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && mrpc_dgxa100-80g_8gpu_fp16)
# Environment: PYTHON (default .venv/bin/python or python3), MAX_SEQ_LENGTH (128),
# EXTRA_ARGS (appended to run_glue.py's flags), DRY_RUN=1 (check the command with one process
# and run_glue.py --dry_run, train nothing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
prep=${BERT_PREP_WORKING_DIR:-$repo/results/data}

init_checkpoint=${1:-"$repo/checkpoints/bert_uncased.pt"}
data_dir=${2:-"$prep/download/glue/MRPC/"}
vocab_file=${3:-"$prep/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
config_file=${4:-"$repo/bert_configs/large.json"}
out_dir=${5:-"$repo/results/MRPC"}
task_name=${6:-"mrpc"}
num_gpu=${7:-"8"}
batch_size=${8:-"16"}
gradient_accumulation_steps=${9:-"1"}
learning_rate=${10:-"2.4e-5"}
warmup_proportion=${11:-"0.1"}
epochs=${12:-"3"}
max_steps=${13:-"-1.0"}
precision=${14:-"fp16"}
seed=${15:-"2"}
mode=${16:-"train eval"}

given() { [[ -n $1 && $1 != None && $1 != none ]]; }  # "None"/"" = not given
die() { echo "run_glue.sh: error: $*" >&2; exit 2; }
[[ $num_gpu =~ ^[1-9][0-9]*$ ]] || die "num_gpu must be a positive integer, got '$num_gpu'"
case $precision in fp16|bf16|tf32|fp32) ;; *) die "unknown precision '$precision' (fp16, bf16, tf32, fp32)";; esac
[[ $mode == *train* || $mode == *eval* || $mode == *prediction* ]] \
    || die "unknown mode '$mode' (any of train, eval, prediction)"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$out_dir" || die "cannot create $out_dir"
[[ $mode == *train* ]] || num_gpu=1  # evaluation and prediction run in one process

# THE one place where positional arguments become run_glue.py flags.
flags=("--task_name=$task_name")
[[ $mode == *train* ]] && flags+=("--do_train" "--train_batch_size=$batch_size")
[[ $mode == *eval* ]] && flags+=("--do_eval")
[[ $mode == *prediction* ]] && flags+=("--do_predict")
[[ $mode == *eval* || $mode == *prediction* ]] && flags+=("--eval_batch_size=$batch_size")
flags+=("--gradient_accumulation_steps=$gradient_accumulation_steps" "--do_lower_case"
        "--data_dir=$data_dir" "--bert_model=bert-large-uncased" "--seed=$seed"
        "--init_checkpoint=$init_checkpoint" "--warmup_proportion=$warmup_proportion"
        "--max_seq_length=${MAX_SEQ_LENGTH:-128}" "--learning_rate=$learning_rate"
        "--num_train_epochs=$epochs" "--max_steps=$max_steps" "--output_dir=$out_dir"
        "--json-summary=$out_dir/dllogger.json")
given "$vocab_file" && flags+=("--vocab_file=$vocab_file")
given "$config_file" && flags+=("--config_file=$config_file")
case $precision in fp16) echo "fp16 activated!"; flags+=("--fp16") ;; bf16) flags+=("--bf16") ;; tf32) flags+=("--tf32") ;; esac
# shellcheck disable=SC2206  # EXTRA_ARGS is a space-separated list of flags by design
flags+=(${EXTRA_ARGS:-})

if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "DRY_RUN: would run on $num_gpu process(es): $repo/run_glue.py ${flags[*]}"
    exec "$PYTHON" "$repo/run_glue.py" "${flags[@]}" --dry_run
fi

if [[ $num_gpu == 1 ]]; then
    launcher=("$PYTHON")
else
    launcher=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$num_gpu")
fi

LOGFILE=$out_dir/logfile
echo "${launcher[*]} $repo/run_glue.py ${flags[*]} |& tee $LOGFILE"
"${launcher[@]}" "$repo/run_glue.py" "${flags[@]}" |& tee "$LOGFILE"
