#!/usr/bin/env bash
# The whole pretraining data pipeline:
#   Wikipedia dump -> text shards (train + held-out) -> WordPiece vocab ->
#   phase 1 HDF5 (128 tokens, 20 predictions) and phase 2 Parquet (512, 80, length bins).
#
# Usage: bash data/create_datasets_from_start.sh [sample|wiki] [OUT_DIR=results/data]
#   sample  the real shortened enwiki dump inside the gensim 4.4.0 wheel (CPU, < 1 minute)
#   wiki    the full English Wikipedia dump (resumable, checksummed download; hours)
# Environment (defaults in brackets):
#   PYTHON [.venv/bin/python or python3]  NUM_WORKERS [nproc]
#   VOCAB_FILE [train one]  VOCAB_SIZE [30522]  DO_LOWER_CASE [true]
#   NUM_TEXT_SHARDS [8 sample, 256 wiki]  NUM_SHARDS [4 sample, 256 wiki]
#   DUPE_FACTOR [5]  HOLDOUT_FRACTION [0.05]  BIN_SIZE [64]  SEED [12345]
#   PHASE1_SEQ [128] PHASE1_PRED [20] PHASE2_SEQ [512] PHASE2_PRED [80]
#   SKIP_PHASE2 [0]  WIKI_DUMP_URL [enwiki latest pages-articles]
#   SKIP_EXISTING [0]  1: skip each step whose complete output is there (its last file,
#     written atomically: text/shards.json, vocab.txt, <shard dir>/.num_samples.json), so
#     a rerun after an interruption resumes at the unfinished step
set -euo pipefail
mode="${1:-sample}"
out="${2:-results/data}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
workers="${NUM_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
lower="${DO_LOWER_CASE:-true}"
seed="${SEED:-12345}"
case "$mode" in
  sample) text_shards="${NUM_TEXT_SHARDS:-8}"; shards="${NUM_SHARDS:-4}" ;;
  wiki) text_shards="${NUM_TEXT_SHARDS:-256}"; shards="${NUM_SHARDS:-256}" ;;
  *) echo "error: mode must be sample or wiki, got '$mode'" >&2; exit 2 ;;
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
