#!/usr/bin/env bash
# GLUE tasks in GLUE's TSV layout, checksummed, unpacked under OUT_DIR/<TASK>/.
# Usage: bash data/glue/download_glue.sh [OUT_DIR=results/glue] [TASK ...]
#   TASKS: SST-2 QNLI RTE WNLI (md5-pinned), MRPC (source files md5-pinned; the dev-id
#   list is not), CoLA MNLI QQP STS-B (no pinned checksum: set ALLOW_UNPINNED=1; the
#   sha256 is printed so you can pin it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/../download_lib.sh"
out="${1:-results/glue}"
shift || true
tasks=("$@")
[[ ${#tasks[@]} -gt 0 ]] || tasks=(SST-2 QNLI RTE WNLI MRPC)
glue=https://dl.fbaipublicfiles.com/glue/data
py="${PYTHON:-python3}"

unpinned() {  # URL OUT
  if [[ "${ALLOW_UNPINNED:-0}" != 1 ]]; then
    echo "error: $1 has no pinned checksum; rerun with ALLOW_UNPINNED=1 to accept it" >&2
    return 1
  fi
  fetch "$1" "$2" none ""
}

unzip_to() {  # ZIP DIR
  "$py" - "$1" "$2" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
}

for t in "${tasks[@]}"; do
  case "$t" in
    SST-2) fetch "$glue/SST-2.zip" "$out/zips/SST-2.zip" md5 9f81648d4199384278b86e315dac217c ;;
    QNLI) fetch "$glue/QNLIv2.zip" "$out/zips/QNLI.zip" md5 b4efd6554440de1712e9b54e14760e82 ;;
    RTE) fetch "$glue/RTE.zip" "$out/zips/RTE.zip" md5 bef554d0cafd4ab6743488101c638539 ;;
    WNLI) fetch "$glue/WNLI.zip" "$out/zips/WNLI.zip" md5 a1b4bd2861017d302d29e42139657a42 ;;
    CoLA|MNLI|STS-B) unpinned "$glue/$t.zip" "$out/zips/$t.zip" ;;
    QQP) unpinned "$glue/QQP-clean.zip" "$out/zips/QQP.zip" ;;
    MRPC)
      s=https://dl.fbaipublicfiles.com/senteval/senteval_data
      fetch "$s/msr_paraphrase_train.txt" "$out/MRPC/msr_paraphrase_train.txt" md5 793daf7b6224281e75fe61c1f80afe35
      fetch "$s/msr_paraphrase_test.txt" "$out/MRPC/msr_paraphrase_test.txt" md5 e437fdddb92535b820fe8852e2df8a49
      unpinned "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc" \
        "$out/MRPC/dev_ids.tsv"
      # GLUE's split: train.tsv/dev.tsv from the train file by the dev ids, test.tsv as is
      "$py" - "$out/MRPC" <<'PY'
import os, sys
d = sys.argv[1]
dev = {tuple(l.strip().split("\t")) for l in open(os.path.join(d, "dev_ids.tsv"), encoding="utf-8-sig")}
lines = open(os.path.join(d, "msr_paraphrase_train.txt"), encoding="utf-8-sig").read().splitlines()
head, rows = lines[0], lines[1:]
with open(os.path.join(d, "train.tsv"), "w", encoding="utf-8") as tr, \
     open(os.path.join(d, "dev.tsv"), "w", encoding="utf-8") as dv:
    tr.write(head + "\n"); dv.write(head + "\n")
    for r in rows:
        f = r.split("\t")
        (dv if (f[1], f[2]) in dev else tr).write(r + "\n")
test = open(os.path.join(d, "msr_paraphrase_test.txt"), encoding="utf-8-sig").read().splitlines()
with open(os.path.join(d, "test.tsv"), "w", encoding="utf-8") as te:
    te.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    for i, r in enumerate(test[1:]):
        f = r.split("\t")
        te.write(f"{i}\t{f[1]}\t{f[2]}\t{f[3]}\t{f[4]}\n")
PY
      continue ;;
    *) echo "error: unknown GLUE task $t" >&2; exit 2 ;;
  esac
  unzip_to "$out/zips/$t.zip" "$out"
  # QNLIv2.zip unpacks to QNLI/, QQP-clean.zip to QQP/
done
echo "GLUE tasks (${tasks[*]}) in $out"
