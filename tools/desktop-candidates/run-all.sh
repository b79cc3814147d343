#!/bin/sh
# Two rounds, candidates back to back; round 2 in reverse order.
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${DESKVM_MEASURE_DIR:-/var/tmp/deskvm-desktops}; mkdir -p "$WORK"; cd "$WORK"
for n in xfce lxqt openbox; do python3 "$HERE/measure.py" $n runs/$n-1 > runs-$n-1.log 2>&1; done
for n in openbox lxqt xfce; do python3 "$HERE/measure.py" $n runs/$n-2 > runs-$n-2.log 2>&1; done
