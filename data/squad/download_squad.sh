#!/usr/bin/env bash
# SQuAD v1.1 and v2.0 (train, dev, official evaluation scripts), md5-checked.
# Usage: bash data/squad/download_squad.sh [OUT_DIR=results/squad]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/../download_lib.sh"
out="${1:-results/squad}"
base=https://rajpurkar.github.io/SQuAD-explorer/dataset
fetch "$base/train-v1.1.json" "$out/v1.1/train-v1.1.json" md5 981b29407e0affa3b1b156f72073b945
fetch "$base/dev-v1.1.json" "$out/v1.1/dev-v1.1.json" md5 3e85deb501d4e538b6bc56f786231552
fetch "https://worksheets.codalab.org/rest/bundles/0xbcd57bee090b421c982906709c8c27e1/contents/blob/" \
  "$out/v1.1/evaluate-v1.1.py" md5 afb04912d18ff20696f7f88eed49bea9
fetch "$base/train-v2.0.json" "$out/v2.0/train-v2.0.json" md5 62108c273c268d70893182d5cf8df740
fetch "$base/dev-v2.0.json" "$out/v2.0/dev-v2.0.json" md5 246adae8b7002f8679c027697b0b7cf8
fetch "https://worksheets.codalab.org/rest/bundles/0x6b567e1cf2e041ec80d7098f031c5c9e/contents/blob/" \
  "$out/v2.0/evaluate-v2.0.py" md5 ff23213bed5516ea4a6d9edb6cd7d627
echo "SQuAD in $out"
