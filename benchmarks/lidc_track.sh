#!/bin/bash
# A whole LIDC protocol track (lidc-v1 by default, PROTOCOL=lidc-v2): every method x seeds, shared
# by WORKERS bench processes of THREADS threads each (default 2 x 1), each taking the next
# (method, seed) from a queue; the bench preset is the protocol's. Resumable: the bench skips an
# evaluation it already holds in OUT and resumes or loads a training, so rerunning continues
# where it stopped.
#
#   benchmarks/lidc_track.sh                          # lidc-v1, 2 workers, seeds 0,1,2, every method
#   PROTOCOL=lidc-v2 WORKERS=1 SEEDS="1 2" METHODS="atfm probunet" benchmarks/lidc_track.sh
#   PROTOCOL=lidc-v2 JOBS="atfm 1,cimd 0" benchmarks/lidc_track.sh   # an explicit queue of "method seed"
#   PROTOCOL=lidc-v2 WORKERS=1 THREADS=2 JOBS="probunet 1" benchmarks/lidc_track.sh  # a training measured alone
#
# Logs: $OUT/logs/worker<i>.log (appended: the start and end of each run, the bench output). AMBISEG may name another
# command that runs the ambiseg CLI (e.g. a frozen copy, so edits to the checkout do not reach a run).
set -euo pipefail
ROOT=${ROOT:-../shared/data/lidc-idri-slices.zip}
PROTOCOL=${PROTOCOL:-lidc-v1}
OUT=${OUT:-benchmarks/results/$PROTOCOL}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-1}
SEEDS=${SEEDS:-"0 1 2"}
# longest first: an evaluation cannot resume mid-way, so cimd's (~95 min on one thread) and ccdm's or
# berdiff's (~65 min each, 100 samples x 10 steps per slice) should start early; lidc-v1's list
# is the published table's, lidc-v2 adds the rivals of issue 29 and the paper-faithful GTR pair
if [ "$PROTOCOL" = lidc-v1 ]; then
  DEFAULT_METHODS="cimd tdpm atfm atfm-nosf phiseg sfm-noise probunet act-gtr det-unet"
else
  DEFAULT_METHODS="cimd tdpm ccdm berdiff atfm atfm-nosf atfm-paper flow-ssn hpunet phiseg sfm-noise probunet act-gtr act-gtr-paper det-unet"
fi
METHODS=${METHODS:-$DEFAULT_METHODS}
AMBISEG=${AMBISEG:-ambiseg}
[ -e "$ROOT" ] || { echo "lidc_track.sh: no LIDC data at $ROOT; set ROOT=<lidc-idri-slices.zip>" >&2; exit 2; }

mkdir -p "$OUT/logs"
queue=$(mktemp)
trap 'rm -f "$queue" "$queue.lock"' EXIT
if [ -n "${JOBS:-}" ]; then
  tr ',' '\n' <<< "$JOBS" | sed 's/^ *//; s/ *$//; /^$/d' > "$queue"
else
  for seed in $SEEDS; do for method in $METHODS; do echo "$method $seed" >> "$queue"; done; done
fi

next() {  # pops the queue's first line under a lock; empty when the queue is done
  flock "$queue.lock" bash -c 'line=$(head -n 1 "$1"); [ -z "$line" ] || sed -i 1d "$1"; echo "$line"' _ "$queue"
}

worker() {
  local line
  while line=$(next) && [ -n "$line" ]; do
    set -- $line
    echo "== $1 seed $2 $(date -u +%FT%TZ)"
    OMP_NUM_THREADS=$THREADS $AMBISEG bench --protocol "$PROTOCOL" --methods "$1" --seeds "$2" --root "$ROOT" \
      --no-baseline --no-progress --out "$OUT" || echo "== $1 seed $2 failed rc=$?"
    echo "== $1 seed $2 done $(date -u +%FT%TZ)"
  done
}

for i in $(seq "$WORKERS"); do worker >> "$OUT/logs/worker$i.log" 2>&1 & done
wait
