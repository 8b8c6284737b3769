#!/usr/bin/env bash
# The real shortened English Wikipedia dump (106 articles, 1.7 MB) from the gensim 4.4.0
# wheel: `pip download --no-deps gensim==4.4.0` into a cache (default ~/.cache/bertforge,
# or $BERTFORGE_CACHE), then the file is read out of the wheel (no gensim install).
# Prints the path of the dump. Usage: bash data/fetch_wiki_sample.sh [CACHE_DIR]
set -euo pipefail
py="${PYTHON:-python3}"
exec "$py" -m bertforge.cli.prepare_wiki_sample ${1:+--cache_dir "$1"}
