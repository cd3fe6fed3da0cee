#!/usr/bin/env bash
# Runs gpu.sh across two device calls, so that its training can outlast one call's 10 minutes:
#
#     bash benchmarks/gpu_calls.sh start SECONDS OUT [TRAIN_MINUTES]   # call 1
#     bash benchmarks/gpu_calls.sh wait SECONDS OUT                    # call 2, on the still-warm machine
#
# start runs gpu.sh (with the environment given, SPEED=0 say) in a process session of its own, which
# outlives the call, into /tmp/gpu-calls (or $GPU_CALLS_DIR); each command then follows its output for
# up to SECONDS, or until it has ended, and copies what it wrote into OUT (model.pth as soon as the
# training ends). A command's processes end with its call, a new session's not: only the machine going
# back ends it.
set -uo pipefail
action=$1
seconds=$2
out=$3
run=${GPU_CALLS_DIR:-/tmp/gpu-calls}
here=$(dirname "$0")

if [ "$action" = start ]; then
    rm -rf "$run" && mkdir -p "$run"
    setsid bash -c "bash '$here/gpu.sh' ${4:-6} '$run' > '$run/gpu.out' 2>&1; touch '$run/done'" < /dev/null &
elif [ "$action" != wait ]; then
    echo "usage: gpu_calls.sh start|wait SECONDS OUT [TRAIN_MINUTES]" >&2
    exit 2
fi

deadline=$((SECONDS + seconds))
while [ ! -f "$run/done" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
mkdir -p "$out"
cp "$run"/*.txt "$run"/*.log "$run"/*.out "$run"/*.csv "$run"/*.pth "$out"/ 2>/dev/null
cat "$run/gpu.out"
grep -E "Iter\(train\)" "$run/train.log" 2>/dev/null | tail -n 3
[ -f "$run/done" ] && echo "gpu.sh has ended" || echo "gpu.sh is still running: call 'wait' again"
