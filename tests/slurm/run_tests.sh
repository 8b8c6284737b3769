#!/usr/bin/env bash
# `make test-slurm`: start a real one-node Slurm cluster, run tests/slurm against it,
# and stop every daemon on the way out (EXIT trap, also on failure or Ctrl-C).
#
#   bash tests/slurm/run_tests.sh [PYTEST ARGS...]
#
# When Slurm cannot be installed here (not root, no apt-get) this prints why and exits 0,
# unless CI or BERTFORGE_REQUIRE_SLURM is set (.ci/run sets it): then it is a failure. With the
# cluster up, a skipped test is a failure too (--no-skips).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PY:-$repo/.venv/bin/python}

rundir=$(mktemp -d "${TMPDIR:-/tmp}/bertforge-slurm.XXXXXX")
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
    bash "$here/stop_cluster.sh" "$rundir"
    # keep the logs of a failed run for inspection; remove the rest
    if [[ ${keep:-0} -eq 0 ]]; then rm -rf "$rundir"; else echo "Slurm state and logs kept in $rundir" >&2; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

start=$SECONDS
rc=0
bash "$here/start_cluster.sh" "$rundir" >"$rundir/start.out" 2>"$rundir/start.err" || rc=$?
cat "$rundir/start.err" >&2
if [[ $rc -eq 3 ]]; then
    reason=$(tail -n 1 "$rundir/start.err")
    if [[ -n ${CI:-} || -n ${BERTFORGE_REQUIRE_SLURM:-} ]]; then
        echo "test-slurm: FAILED: a Slurm cluster is required here (CI or BERTFORGE_REQUIRE_SLURM set): ${reason#start_cluster: }" >&2
        exit 1
    fi
    echo "test-slurm: SKIPPED: ${reason#start_cluster: }" >&2
    exit 0
elif [[ $rc -ne 0 ]]; then
    keep=1
    exit "$rc"
fi
export SLURM_CONF="$rundir/slurm.conf" BERTFORGE_SLURM_RUNDIR="$rundir"

rc=0
"$py" -m pytest -q -p no:cacheprovider --no-skips -m slurm "$here" "$@" || rc=$?
[[ $rc -eq 0 ]] || keep=1
echo "test-slurm: pytest exit $rc after $((SECONDS - start)) s" >&2
exit "$rc"
