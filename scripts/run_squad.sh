#!/usr/bin/env bash
# SQuAD fine-tuning / prediction / evaluation with NVIDIA's positional arguments, in
# NVIDIA's order (DeepLearningExamples PyTorch/LanguageModeling/BERT/scripts/run_squad.sh):
#
#   1 init_checkpoint     6 precision fp16|bf16|tf32|fp32   11 OUT_DIR
#   2 epochs              7 num_gpu (processes; CPU ok)     12 mode: train | eval | prediction | "train eval"
#   3 batch_size          8 seed                            13 CONFIG_FILE (bert_config.json; None = from the checkpoint)
#   4 learning_rate       9 squad_dir                       14 max_steps (-1: epochs decide)
#   5 warmup_proportion  10 vocab_file (None = vocab.txt of an HF checkpoint directory)
#
# NVIDIA's 2020 order (13 arguments, no warmup_proportion: 5 is the precision) is recognised
# by its 5th argument (fp16|bf16|tf32|fp32) and works too, as in NVIDIA's README examples.
# squad_dir holds train-v1.1.json and dev-v1.1.json (train-v2.0.json / dev-v2.0.json with
# SQUAD_VERSION=2.0, which also adds --version_2_with_negative). Evaluation is built in
# (the official EM/F1); when squad_dir holds evaluate-v1.1.py (v2.0), it is passed as
# --eval_script, as NVIDIA's script does, and run_squad.py reports its scores.
# Presets: scripts/configs/squad_config.sh, e.g.
#   bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && dgxa100-80g_8gpu_fp16) train eval
# Environment: PYTHON (default .venv/bin/python or python3), SQUAD_VERSION (1.1), MAX_SEQ_LENGTH
# (384), DOC_STRIDE (128), EXTRA_ARGS (appended to run_squad.py's flags), DRY_RUN=1 (check the
# command with one process and run_squad.py --dry_run, train nothing).
# Without a GPU it runs on the CPU: one process with python, more with torchrun (gloo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

args=("$@")
case ${5:-} in fp16|bf16|tf32|fp32)  # NVIDIA's 2020 order: no warmup_proportion
    args=("${@:1:4}" "0.1" "${@:5}") ;;
esac
init_checkpoint=${args[0]:-"$repo/checkpoints/bert_uncased.pt"}
epochs=${args[1]:-"2.0"}
batch_size=${args[2]:-"4"}
learning_rate=${args[3]:-"3e-5"}
warmup_proportion=${args[4]:-"0.1"}
precision=${args[5]:-"fp16"}
num_gpu=${args[6]:-"8"}
seed=${args[7]:-"1"}
squad_dir=${args[8]:-"${BERT_PREP_WORKING_DIR:-$repo/results/data}/download/squad/v1.1"}
vocab_file=${args[9]:-"${BERT_PREP_WORKING_DIR:-$repo/results/data}/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
OUT_DIR=${args[10]:-"$repo/results/SQuAD"}
mode=${args[11]:-"train eval"}
CONFIG_FILE=${args[12]:-"$repo/bert_configs/large.json"}
max_steps=${args[13]:-"-1"}
version=${SQUAD_VERSION:-1.1}
[[ $mode == predict ]] && mode=prediction  # the name NVIDIA's README uses

given() { [[ -n $1 && $1 != None && $1 != none ]]; }  # "None"/"" = not given
die() { echo "run_squad.sh: error: $*" >&2; exit 2; }
[[ $num_gpu =~ ^[1-9][0-9]*$ ]] || die "num_gpu must be a positive integer, got '$num_gpu'"
case $precision in fp16|bf16|tf32|fp32) ;; *) die "unknown precision '$precision' (fp16, bf16, tf32, fp32)";; esac
case $mode in train|eval|prediction|"train eval") ;; *) die "unknown mode '$mode' (train, eval, prediction, \"train eval\")";; esac
case $version in 1.1|2.0) ;; *) die "SQUAD_VERSION must be 1.1 or 2.0, got '$version'";; esac
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi

echo "out dir is $OUT_DIR"
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"

# THE one place where positional arguments become run_squad.py flags.
flags=("--init_checkpoint=$init_checkpoint")
if [[ $mode == train || $mode == "train eval" ]]; then
    flags+=("--do_train" "--train_file=$squad_dir/train-v$version.json" "--train_batch_size=$batch_size")
fi
if [[ $mode != train ]]; then
    flags+=("--do_predict" "--predict_file=$squad_dir/dev-v$version.json" "--predict_batch_size=$batch_size")
    if [[ $mode != prediction ]]; then
        flags+=("--do_eval")
        [[ -f $squad_dir/evaluate-v$version.py ]] && flags+=("--eval_script=$squad_dir/evaluate-v$version.py")
    fi
fi
flags+=("--do_lower_case" "--bert_model=bert-large-uncased" "--learning_rate=$learning_rate"
        "--warmup_proportion=$warmup_proportion" "--seed=$seed" "--num_train_epochs=$epochs"
        "--max_seq_length=${MAX_SEQ_LENGTH:-384}" "--doc_stride=${DOC_STRIDE:-128}"
        "--output_dir=$OUT_DIR" "--max_steps=$max_steps" "--json-summary=$OUT_DIR/dllogger.json")
given "$vocab_file" && flags+=("--vocab_file=$vocab_file")
given "$CONFIG_FILE" && flags+=("--config_file=$CONFIG_FILE")
[[ $version == 2.0 ]] && flags+=("--version_2_with_negative")
case $precision in fp16) echo "fp16 activated!"; flags+=("--fp16") ;; bf16) flags+=("--bf16") ;; tf32) flags+=("--tf32") ;; esac
# shellcheck disable=SC2206  # EXTRA_ARGS is a space-separated list of flags by design
flags+=(${EXTRA_ARGS:-})

if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "DRY_RUN: would run on $num_gpu process(es): $repo/run_squad.py ${flags[*]}"
    exec "$PYTHON" "$repo/run_squad.py" "${flags[@]}" --dry_run
fi
if [[ $num_gpu == 1 ]]; then
    launcher=("$PYTHON")
else
    launcher=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$num_gpu")
fi

LOGFILE=$OUT_DIR/logfile.txt
echo "${launcher[*]} $repo/run_squad.py ${flags[*]} |& tee $LOGFILE"
time "${launcher[@]}" "$repo/run_squad.py" "${flags[@]}" |& tee "$LOGFILE"
