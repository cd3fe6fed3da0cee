#!/usr/bin/env bash
# The GPU figures of RESULTS.md in one go, sized for a 10-minute slot on one H100/H200:
#
#     bash benchmarks/gpu.sh [TRAIN_MINUTES] [OUTPUT_DIR]
#
# Needs the alpr dependencies with mmcv built with CUDA ops (RESULTS.md says how it was built).
# Checks the CUDA ops first, times the data loader (loader_speed.py), training and inference
# (model_speed.py, profiled by py-spy with PROFILE=1), trains for TRAIN_MINUTES on fresh synthetic
# data and scores EIR on an unseen seed (accuracy.py, which prints its exact command and the
# training's images/s), times the trained model's reading at batch 1 and 16 (model_speed.py, always:
# under a minute), times scoring (score_speed.py), then serves that model (serve_speed.py).
# TRAIN_MINUTES of 0 measures only the speeds; SPEED=0 skips the loader, untrained-model, scoring and
# serving speeds (minutes), so that one call can train for most of its time. The rest's length moves
# with the code (synthesis, the glyph classifier, reading at four widths): the last lease's
# RESULTS.md section says what it took.
# Images are resized to IMG_SIZE (1280: full detail for small plates) and trained on CROP_SIZE
# crops (448: rtmdet-ins-tiny's default), BATCH at a time (128; half that if the speed stage finds it
# does not fit, so never with SPEED=0) at learning rate LR (0.008 for 256 images a step, twice RTMDet's
# own 0.004 as on the CPU, where 2e-3 read more plates than 1e-3 at batch 8 for three training seeds
# (RESULTS.md, "Twice the learning rate"), with the square root of the batch), on TRAIN_IMAGES
# synthetic images (4000).
# LOAD_FROM=PATH starts the training from a carried checkpoint's weights (a model.pth an earlier
# call brought back, say), so that training time adds up across calls and leases.
# On the third lease, 14 loader workers made about 200 crops/s, and the step's host work was
# about 0.3 s plus 1.6 ms a crop: 128 a step keeps about the pace of 256 with twice the steps.
# Each figure is printed and saved in OUTPUT_DIR; a failing stage does not stop the later ones.
set -uo pipefail
minutes=${1:-4}
out=${2:-gpu-results}
size=${IMG_SIZE:-1280}
crop=${CROP_SIZE:-448}
batch=${BATCH:-128}
train_images=${TRAIN_IMAGES:-4000}
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
here=$(dirname "$0")
mkdir -p "$out"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/gpu_use.csv" &
monitor=$!
python3 - <<'PY' || exit 1
# Fail fast when mmcv was built without CUDA ops: NMS on the GPU must match the CPU.
import torch
from mmcv.ops import batched_nms
boxes = torch.rand(2000, 4) * 500
boxes[:, 2:] += boxes[:, :2]
scores, labels = torch.rand(2000), torch.randint(0, 5, (2000,))
cpu, _ = batched_nms(boxes, scores, labels, dict(iou_threshold=0.5))
gpu, _ = batched_nms(boxes.cuda(), scores.cuda(), labels.cuda(), dict(iou_threshold=0.5))
assert torch.allclose(cpu, gpu.cpu()), "mmcv CUDA NMS differs from the CPU"
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: mmcv CUDA ops work ({len(cpu)} boxes kept)")
PY

# The most a training run can reach: images/s through its data loader (about 30 s). On the third
# lease, training waited half of each step for its batch while the GPU idled.
speed=${SPEED:-1}
# Workers hand their batches over in waves of as many: timing two whole waves, not a part of one.
[ "$speed" = 1 ] && python3 "$here/loader_speed.py" --batch-size $batch --workers $workers --batches $(( 2 * workers )) \
    --img-size "$size" --crop-size "$crop" 2>&1 | tee "$out/loader_speed.txt"

# PROFILE=1 runs the speed measurement under py-spy (its wheel travels in .whl) and prints where
# the training process's time goes. py-spy samples without pausing the processes (--nonblocking):
# the third lease's pausing, 100 times a second in 15 processes, stretched a minute into seven.
measure_speed() {  # $1: "profiled" to run under py-spy
    local timing=(python3 "$here/model_speed.py" --device cuda --batch-size $batch --workers $workers --amp
                 --iters $(( 3 * workers > 20 ? 3 * workers : 20 )) --runs 20 --images 1024 --img-size "$size" --crop-size "$crop" --batch 1 16)
    if [ "${1:-}" = profiled ]; then
        py-spy record --nonblocking --subprocesses --rate 50 --format raw -o "$out/train_profile.txt" -- "${timing[@]}" \
            2>&1 | tee "$out/model_speed.txt"
        python3 "$here/profile_summary.py" "$out/train_profile.txt" --top 30
    else
        "${timing[@]}" 2>&1 | tee "$out/model_speed.txt"
    fi
}
measured() { grep -q '^train_images_per_second=' "$out/model_speed.txt"; }
if [ "$speed" = 1 ]; then
    measure_speed $([ "${PROFILE:-0}" = 1 ] && command -v py-spy > /dev/null && echo profiled)
    if ! measured && grep -q "out of memory" "$out/model_speed.txt"; then
        batch=$(( batch / 2 ))
        echo "out of GPU memory: again at batch $batch"
    fi
    measured || measure_speed plain  # out of memory, or py-spy could not run
fi
# the learning rate with the square root of the batch, from 0.008 at 256, unless LR is given
lr=${LR:-$(python3 -c "print(round(0.008 * ($batch / 256) ** 0.5, 5))")}

# The training step's own time budget: its cosine schedule follows the time spent, and it validates
# and checkpoints once, at the end. Its warm-up: 100 iterations or a tenth of the time, if sooner.
# 250 test images hold about 570 plates.
# model.pth, what reading needs (float16 weights, config, classes), is saved before the scoring and
# is small enough to come back.
if [ "$minutes" != 0 ]; then
    python3 "$here/accuracy.py" --device cuda --minutes "$minutes" --batch-size $batch --workers $workers --amp \
        --lr "$lr" --img-size "$size" --crop-size "$crop" --train-images "$train_images" --test-images 250 \
        --train-log "$out/train.log" --save-checkpoint "$out/model.pth" ${LOAD_FROM:+--load-from "$LOAD_FROM"} \
        | tee "$out/accuracy.txt"
fi

checkpoint=()
[ -f "$out/model.pth" ] && checkpoint=(--checkpoint "$out/model.pth")
# the trained model's reading at batch 1 and 16, each board read again as PlateReader does (the
# untrained speed model finds none to read again): issue 3's inference figures, whatever SPEED is
[ ${#checkpoint[@]} -gt 0 ] && python3 "$here/model_speed.py" --device cuda "${checkpoint[@]}" \
    --runs 20 --batch 1 16 2>&1 | tee "$out/read_speed.txt"
if [ "$speed" = 1 ]; then
    python3 "$here/score_speed.py" --device cuda  # printed only: $OUT brings back 8 files at most
    python3 "$here/serve_speed.py" --device cuda "${checkpoint[@]}" --requests 200 --concurrency 1 8 \
        | tee "$out/serve_speed.txt"
fi
kill $monitor
