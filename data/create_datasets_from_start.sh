#!/usr/bin/env bash
# The whole pretraining data pipeline:
#   Wikipedia dump -> text shards (train + held-out) -> WordPiece vocab ->
#   phase 1 HDF5 (128 tokens, 20 predictions) and phase 2 Parquet (512, 80, length bins).
#
# Usage: bash data/create_datasets_from_start.sh [MODE] [OUT_DIR=$BERT_PREP_WORKING_DIR or results/data]
#   sample      the real shortened enwiki dump inside the gensim 4.4.0 wheel (CPU, < 1 minute)
#   wiki        the full English Wikipedia dump (resumable, checksummed download; hours)
#   NVIDIA's forms (docs/nvidia.md):
#   (none)      NVIDIA's current form: wiki, plus what NVIDIA's script downloads besides:
#               Google's uncased vocab (used for the shards, as NVIDIA's are) into
#               download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt, SQuAD
#               into download/squad, GLUE MRPC and SST-2 into download/glue
#   wiki_only   NVIDIA's 2020 form: the same
#   wiki_books  NVIDIA's 2020 form with BookCorpus, which cannot be downloaded anywhere: one
#               line says so and the Wikipedia part runs
# Environment (defaults in brackets):
#   BERT_PREP_WORKING_DIR [results/data]: the output directory when OUT_DIR is not given
#     (run_pretraining.sh and the presets read the data there)
#   PYTHON [.venv/bin/python or python3]  NUM_WORKERS [nproc]
#   VOCAB_FILE [train one; Google's for NVIDIA's forms]  VOCAB_SIZE [30522]  DO_LOWER_CASE [true]
#   NUM_TEXT_SHARDS [8 sample, 256 wiki]  NUM_SHARDS [4 sample, 256 wiki]
#   DUPE_FACTOR [5]  HOLDOUT_FRACTION [0.05]  BIN_SIZE [64]  SEED [12345]
#   PHASE1_SEQ [128] PHASE1_PRED [20] PHASE2_SEQ [512] PHASE2_PRED [80]
#   SKIP_PHASE2 [0]  WIKI_DUMP_URL [enwiki latest pages-articles]
#   DOWNLOAD_FINETUNING [1 for NVIDIA's forms, else 0]: SQuAD and GLUE MRPC/SST-2 too
#   SKIP_EXISTING [0]  1: skip each step whose complete output is there (its last file,
#     written atomically: text/shards.json, vocab.txt, <shard dir>/.num_samples.json), so
#     a rerun after an interruption resumes at the unfinished step
set -euo pipefail
mode="${1:-}"
out="${2:-${BERT_PREP_WORKING_DIR:-results/data}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
workers="${NUM_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
lower="${DO_LOWER_CASE:-true}"
seed="${SEED:-12345}"
nvidia_form=0
case "$mode" in
  "" | wiki_only) nvidia_form=1; mode=wiki ;;
  wiki_books)
    echo "wiki_books: BookCorpus cannot be downloaded (its distribution was withdrawn and no mirror is licensed); making the Wikipedia part only"
    nvidia_form=1; mode=wiki ;;
esac
case "$mode" in
  sample) text_shards="${NUM_TEXT_SHARDS:-8}"; shards="${NUM_SHARDS:-4}" ;;
  wiki) text_shards="${NUM_TEXT_SHARDS:-256}"; shards="${NUM_SHARDS:-256}" ;;
  *) echo "error: mode must be sample, wiki, wiki_only, wiki_books or none, got '$mode'" >&2; exit 2 ;;
esac
mkdir -p "$out"
t0=$SECONDS
step() { echo "[$((SECONDS - t0))s] $*" >&2; }
have() {  # marker -> true (and say so) when SKIP_EXISTING=1 and the step's last output exists
  [[ "${SKIP_EXISTING:-0}" == 1 && -e "$1" ]] || return 1
  step "skipping: $1 exists"
}

# 1. the dump
if [[ "$mode" == sample ]]; then
  step "fetching the Wikipedia sample (gensim 4.4.0 wheel, cached)"
  dump="$("$PYTHON" -m bertforge.cli.prepare_wiki_sample)"
else
  # shellcheck source=/dev/null
  source "$here/download_lib.sh"
  url="${WIKI_DUMP_URL:-https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2}"
  dump="$out/download/$(basename "$url")"
  step "downloading $url (resumable)"
  fetch "$(dirname "$url")/enwiki-latest-sha1sums.txt" "$out/download/sha1sums.txt" none ""
  want="$(grep " $(basename "$url")\$" "$out/download/sha1sums.txt" | cut -d' ' -f1)"
  [[ -n "$want" ]] || { echo "error: no checksum for $(basename "$url") in sha1sums.txt" >&2; exit 1; }
  fetch "$url" "$dump" sha1 "$want"
fi

# NVIDIA's forms also fetch Google's uncased vocab (the shards use it, so NGC checkpoints fit
# them) and the fine-tuning data, where NVIDIA's run_squad.sh / run_glue.sh look for them.
if [[ $nvidia_form == 1 ]]; then
  # shellcheck source=/dev/null
  source "$here/download_lib.sh"
  if [[ -z "${VOCAB_FILE:-}" ]]; then
    VOCAB_FILE="$out/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
    step "Google's uncased vocab -> $VOCAB_FILE"
    fetch "${GOOGLE_VOCAB_URL:-https://huggingface.co/google-bert/bert-large-uncased/resolve/main/vocab.txt}" \
      "$VOCAB_FILE" sha256 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
  fi
  if [[ "${DOWNLOAD_FINETUNING:-1}" == 1 ]]; then
    step "SQuAD -> $out/download/squad, GLUE MRPC and SST-2 -> $out/download/glue"
    bash "$here/squad/download_squad.sh" "$out/download/squad"
    bash "$here/glue/download_glue.sh" "$out/download/glue" MRPC SST-2
  fi
fi

# 2. text shards: one sentence per line, blank line between documents
have "$out/text/shards.json" || { step "extracting text from $dump"
"$PYTHON" -m bertforge.cli.prepare_text --input "$dump" --output_dir "$out/text" \
  --num_shards "$text_shards" --holdout_fraction "${HOLDOUT_FRACTION:-0.05}" \
  --seed "$seed" --num_workers "$workers"; }

# 3. vocabulary
if [[ -n "${VOCAB_FILE:-}" ]]; then
  vocab="$VOCAB_FILE"
  step "using the given vocab $vocab"
else
  vocab="$out/vocab.txt"
  if ! have "$vocab"; then
    step "training a WordPiece vocab (${VOCAB_SIZE:-30522})"
    case_flag=--do_lower_case; [[ "$lower" == true ]] || case_flag=--no_lower_case
    "$PYTHON" -m bertforge.cli.prepare_vocab --input "$out/text/train" --output "$vocab" \
      --vocab_size "${VOCAB_SIZE:-30522}" "$case_flag"
  fi
fi

common=(--vocab_file "$vocab" --do_lower_case "$lower" --random_seed "$seed"
        --dupe_factor "${DUPE_FACTOR:-5}" --num_workers "$workers")
# 4. phase 1: NVIDIA HDF5, static masking
have "$out/phase1_hdf5/.num_samples.json" || { step "phase 1 HDF5 (${PHASE1_SEQ:-128}/${PHASE1_PRED:-20})"
"$PYTHON" -m bertforge.cli.create_pretraining_data --input_file "$out/text/train" \
  --output_file "$out/phase1_hdf5" --max_seq_length "${PHASE1_SEQ:-128}" \
  --max_predictions_per_seq "${PHASE1_PRED:-20}" --num_shards "$shards" "${common[@]}"; }
if [[ -d "$out/text/holdout" ]] && ! have "$out/phase1_holdout_hdf5/.num_samples.json"; then
  "$PYTHON" -m bertforge.cli.create_pretraining_data --input_file "$out/text/holdout" \
    --output_file "$out/phase1_holdout_hdf5" --max_seq_length "${PHASE1_SEQ:-128}" \
    --max_predictions_per_seq "${PHASE1_PRED:-20}" --num_shards 1 "${common[@]}"
fi
# 5. phase 2: LDDL Parquet, static masking, length bins
if [[ "${SKIP_PHASE2:-0}" != 1 ]] && ! have "$out/phase2_parquet/.num_samples.json"; then
  step "phase 2 Parquet (${PHASE2_SEQ:-512}/${PHASE2_PRED:-80}, bins of ${BIN_SIZE:-64})"
  "$PYTHON" -m bertforge.cli.create_pretraining_data --input_file "$out/text/train" \
    --output_file "$out/phase2_parquet" --output_format parquet \
    --max_seq_length "${PHASE2_SEQ:-512}" --max_predictions_per_seq "${PHASE2_PRED:-80}" \
    --bin_size "${BIN_SIZE:-64}" --num_shards "$shards" "${common[@]}"
fi
step "done: $out (vocab $vocab)"
