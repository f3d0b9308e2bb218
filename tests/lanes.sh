#!/usr/bin/env bash
# `make test` in two lanes, two pytest processes at once: the tests whose outcome depends on timing (nodes killed,
# drained, scaled up and down, drivers killed, deadlines) run one after another in the first lane; every other test
# runs in the second. Two of the timing-bound ones at once on 2 cores made them flaky; one beside the other lane
# does not. (pytest-xdist's --dist loadgroup was meant to do this, but xdist 3.8.0 ignored the groups here.)
# Usage: bash tests/lanes.sh PYTHON [pytest args...]
set -u
PY=$1
shift
TIMING_BOUND=(
  tests/integration/test_batch.py
  tests/integration/test_cluster_local.py
  tests/integration/test_driver_loss.py
  tests/integration/test_elastic.py
  tests/integration/test_faults.py
  tests/integration/test_fsdp.py
  tests/integration/test_local_cluster.py
  tests/integration/test_mid_epoch_checkpoints.py
  tests/integration/test_preemption.py
  tests/integration/test_sweep.py
)
ignore=()
for f in "${TIMING_BOUND[@]}"; do ignore+=("--ignore=$f"); done
log=$(mktemp)
"$PY" -m pytest "$@" "${ignore[@]}" tests >"$log" 2>&1 &
other=$!
# On Ctrl-C (or any exit) lane 2 is interrupted too, so that its fixtures stop the Ray clusters they started
# (tests/conftest.py gives it back the SIGINT that a background job of a script starts without).
stop_other() {
  if kill -0 "$other" 2>/dev/null; then
    kill -INT "$other"
    for _ in $(seq 60); do kill -0 "$other" 2>/dev/null || break; sleep 1; done
    kill -TERM "$other" 2>/dev/null
  fi
  rm -f "$log"
}
trap stop_other EXIT
trap 'exit 130' INT TERM
echo "lane 1: the timing-bound cluster tests (lane 2, every other test, prints when it ends)"
"$PY" -m pytest "$@" "${TIMING_BOUND[@]}"
first=$?
wait "$other"
second=$?
echo
echo "lane 2: every other test"
cat "$log"
echo
echo "lane 1 exit $first, lane 2 exit $second"
exit $((first != 0 ? first : second))
