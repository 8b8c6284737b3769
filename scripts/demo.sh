#!/usr/bin/env bash
# `make demo`: the whole BERT pipeline on the real (shortened) English Wikipedia dump, CPU only,
# run as a preset of the real scripts:
#   1 data/create_datasets_from_start.sh sample   dump -> text -> WordPiece vocab ->
#                                                 phase-1 HDF5 + phase-2 Parquet shards
#   2 scripts/run_pretraining.sh <demo preset>    two-phase LAMB pretraining of a small BERT
#   3 run_pretraining.py (evaluation only)        held-out MLM accuracy, trained vs untrained
#   4 python -m bertforge.cli.fill_mask           [MASK] examples from held-out sentences
#   5 python -m bertforge.plot                    loss / learning-rate curves (PNG)
# Everything goes under OUT_DIR (default results/demo); the last lines name it.
# Interrupt it (Ctrl-C) and run it again: finished steps are skipped (each writes its outputs
# atomically, so an output that exists is complete) and pretraining continues from its latest
# checkpoint. Delete OUT_DIR to start over.
#
# Usage: bash scripts/demo.sh [OUT_DIR]
# Environment: PYTHON (default .venv/bin/python or python3);
#   DEMO_PRESET  full (default: 6-10 min on 2 cores) | smoke (a few steps, for tests)
#   DEMO_STOP_AFTER  data | pretrain: stop after step 1 (scripts/demo_qa.sh needs only the
#                    text) or step 2
#   DEMO_PROCS   training/evaluation processes [2]; the batch sizes are per process
# Scaling up is a matter of arguments to the same scripts: see docs/pretraining.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${1:-$repo/results/demo}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
preset="${DEMO_PRESET:-full}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON

# -- the preset: every size of the demo in one place ------------------------------------------
# Phase 1: sequences of 128 (20 masked), phase 2: 512 (80 masked), both LAMB with warmup.
# Two processes (torchrun, gloo), one thread each: on 2 cores that is several times faster
# than one process with two threads for a model this small. Batches are per process.
procs="${DEMO_PROCS:-2}"
[[ "$procs" =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: error: DEMO_PROCS must be a positive integer, got '$procs'" >&2; exit 2; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "$preset" in
    full)
        vocab_size=8192 dupe_factor=5 text_shards=8 shards=4 phase2_seq=512 phase2_pred=80
        bert_config="$repo/bert_configs/demo.json"
        p1_batch=32 p1_lr=1e-2 p1_warmup=0.1 p1_steps=600
        p2_batch=8 p2_lr=4e-3 p2_warmup=0.1 p2_steps=40
        ckpt_every=100 log_every=20 eval_batches=20 eval_batch=64 fill_examples=6 ;;
    smoke)
        vocab_size=1000 dupe_factor=1 text_shards=2 shards=1 phase2_seq=128 phase2_pred=20
        bert_config="$repo/bert_configs/demo.json"
        p1_batch=4 p1_lr=1e-2 p1_warmup=0.1 p1_steps="${DEMO_SMOKE_STEPS:-30}"
        p2_batch=2 p2_lr=4e-3 p2_warmup=0.1 p2_steps=2
        ckpt_every="${DEMO_SMOKE_CKPT_EVERY:-10}" log_every=1 eval_batches=4 eval_batch=32 fill_examples=2 ;;
    *) echo "demo.sh: error: DEMO_PRESET must be full or smoke, got '$preset'" >&2; exit 2 ;;
esac

data="$out/data"
export BERT_PREP_WORKING_DIR="$data"  # where the CPU presets of run_pretraining.sh find the data
vocab="$data/vocab.txt"
final_ckpt="$out/checkpoints/ckpt_$((p1_steps + p2_steps)).pt"

# The console output is also kept in $out/demo.log (appended to on every run).
exec > >(tee -i -a "$out/demo.log") 2>&1  # -i: Ctrl-C must not kill the log
t0=$SECONDS
on_exit() {  # Ctrl-C or a failure: say how to continue (children print their own messages)
    local rc=$? latest
    (( rc != 0 )) || return 0
    latest=$(find "$out/checkpoints" -maxdepth 1 -name 'ckpt_*.pt' 2>/dev/null | sort -V | tail -n 1)
    echo
    echo "demo stopped (status $rc) after $((SECONDS - t0)) s. Run it again to continue: finished steps are kept"
    [[ -z $latest ]] || echo "and pretraining resumes from $latest."
}
trap on_exit EXIT
trap 'exit 130' INT
stage() { echo; echo "=== [$1/5] ${*:2}   (demo time $((SECONDS - t0)) s)"; }
skip() { echo "    done before: $1 exists (delete it to redo this step)"; }

demo_pretrain_args() {  # the 32 positional arguments of scripts/run_pretraining.sh
    # shellcheck source=configs/pretrain_config.sh
    source "$here/configs/pretrain_config.sh"
    _cpu_common  # CPU defaults (fp32, one process, static masking, data from BERT_PREP_WORKING_DIR)
    train_batch_size=$p1_batch learning_rate=$p1_lr warmup_proportion=$p1_warmup
    train_steps=$p1_steps gradient_accumulation_steps=1
    train_batch_size_phase2=$p2_batch learning_rate_phase2=$p2_lr
    warmup_proportion_phase2=$p2_warmup train_steps_phase2=$p2_steps
    gradient_accumulation_steps_phase2=1 save_checkpoint_steps=$ckpt_every
    resume_training=true create_logfile=false num_workers=1 seed=12439 num_gpus=$procs
    job_name=bert_demo BERT_CONFIG=$bert_config
    _pretrain_args
}

echo "bertforge demo ($preset preset): results in $out"
echo "Ctrl-C stops it; running it again continues where it stopped."

# 1. data ---------------------------------------------------------------------------------------
stage 1 "Wikipedia sample -> text -> vocab -> phase-1 HDF5 + phase-2 Parquet ($data)"
SKIP_EXISTING=1 VOCAB_SIZE=$vocab_size DUPE_FACTOR=$dupe_factor NUM_TEXT_SHARDS=$text_shards \
    NUM_SHARDS=$shards PHASE2_SEQ=$phase2_seq PHASE2_PRED=$phase2_pred \
    bash "$repo/data/create_datasets_from_start.sh" sample "$data"

if [[ "${DEMO_STOP_AFTER:-}" == data ]]; then echo "data ready: $data"; exit 0; fi

# 2. pretraining --------------------------------------------------------------------------------
stage 2 "two-phase LAMB pretraining of a small BERT ($(basename "$bert_config")) on $procs processes:" \
        "$p1_steps steps x $((p1_batch * procs)) sequences of 128, then $p2_steps x $((p2_batch * procs)) of <= $phase2_seq"
if [[ -f "$final_ckpt" ]]; then
    skip "$final_ckpt"
else
    # shellcheck disable=SC2046  # the preset is a list of 32 words by design
    RESULTS_DIR="$out" EXTRA_ARGS="--log_freq=$log_every" \
        bash "$here/run_pretraining.sh" $(demo_pretrain_args)
fi

if [[ "${DEMO_STOP_AFTER:-}" == pretrain ]]; then echo "pretrained: $final_ckpt"; exit 0; fi

# 3. held-out MLM accuracy: the pretrained model and the same model untrained ---------------------
stage 3 "held-out MLM accuracy ($((eval_batches * procs)) batches of $eval_batch held-out sequences)"
launch=("$PYTHON")  # the same launch as training: one process per core share
(( procs > 1 )) && launch=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$procs")
for which in untrained trained; do
    f="$out/eval_$which.json"
    if [[ -f "$f" ]]; then skip "$f"; continue; fi
    flags=(--input_dir "$data/phase1_hdf5" --eval_dir "$data/phase1_holdout_hdf5"
           --output_dir "$out/checkpoints" --config_file "$bert_config" --vocab_file "$vocab"
           --max_seq_length 128 --max_predictions_per_seq 20 --num_eval_batches "$eval_batches"
           --eval_batch_size "$eval_batch" --num_workers 0 --seed 12439
           --json-summary "$f.partial")
    [[ $which == trained ]] && flags+=(--init_checkpoint "$final_ckpt")
    echo "    $which model:"
    "${launch[@]}" "$repo/run_pretraining.py" "${flags[@]}"
    mv "$f.partial" "$f"
done

# 4. fill-mask on held-out sentences ------------------------------------------------------------
stage 4 "fill-mask on held-out sentences"
if [[ -f "$out/fill_mask.txt" ]]; then
    skip "$out/fill_mask.txt"
else
    "$PYTHON" -m bertforge.cli.fill_mask --init_checkpoint "$final_ckpt" --vocab_file "$vocab" \
        --from_text "$data/text/holdout" --num_examples "$fill_examples" --top_k 5 --seed 3 \
        --output "$out/fill_mask.json" > "$out/fill_mask.txt.partial"
    mv "$out/fill_mask.txt.partial" "$out/fill_mask.txt"
fi

# 5. curves -------------------------------------------------------------------------------------
stage 5 "loss and learning-rate curves from the dllogger log"
png="$out/pretraining_curves.png"
if [[ -f "$png" ]]; then
    skip "$png"
else
    "$PYTHON" -m bertforge.plot "$out/dllogger.json" -o "$png" \
        --title "bertforge demo: BERT $(basename "$bert_config") pretrained on the Wikipedia sample"
fi

# summary ---------------------------------------------------------------------------------------
accuracies() {  # the eval logs -> two summary lines; status 1 when pretraining did not help
    "$PYTHON" - "$out/eval_trained.json" "$out/eval_untrained.json" <<'EOF'
import sys
from bertforge.plot import read_records
acc = []
for path, name in zip(sys.argv[1:], ("pretrained", "untrained ")):
    d = [r["data"] for r in read_records(path)[0]
         if r.get("type") == "LOG" and r.get("step") == [] and "eval_mlm_accuracy" in r.get("data", {})][-1]
    acc.append(d["eval_mlm_accuracy"])
    a = 100 * d["eval_mlm_accuracy"]
    lead = "Held-out MLM accuracy:  " if name == "pretrained" else " " * 24
    print(f"{lead}{name} {f'{a:.1f}%' if a >= 1 else f'{a:.2g}%'} "
          f"(MLM loss {d['eval_mlm_loss']:.2f}, {d['eval_masked_tokens']} masked tokens)")
if acc[0] <= acc[1]:
    print("error: the pretrained model is no better than the untrained one on held-out data", file=sys.stderr)
    sys.exit(1)
EOF
}
echo
echo "=== bertforge demo finished in $((SECONDS - t0)) s (this run)"
echo "Fill-mask, pretrained model, held-out sentences (top 5 with probabilities):"
cat "$out/fill_mask.txt"
echo
better=true
accuracies || better=false
echo "Curves (loss, learning rate, throughput): $png"
echo "Checkpoints: $out/checkpoints   dllogger log: $out/dllogger.json   console log: $out/demo.log"
echo "All results: $out"
# The demo asserts what it shows: pretraining must beat the untrained model (no resume hint here).
[[ $better == true ]] || { trap - EXIT; exit 1; }
