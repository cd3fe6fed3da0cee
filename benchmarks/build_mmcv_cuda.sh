#!/usr/bin/env bash
# Builds an mmcv 2.1.0 wheel with CUDA ops on a machine WITHOUT a GPU, for a GPU machine that
# has no compiler time to spare (benchmarks/gpu.sh runs in a 10-minute slot):
#
#     bash benchmarks/build_mmcv_cuda.sh PYTHON TORCH_VERSION [ARCH] [OUTPUT_DIR]
#     bash benchmarks/build_mmcv_cuda.sh ~/.pyenv/versions/3.12.1/bin/python 2.11.0 9.0 .whl
#
# PYTHON and TORCH_VERSION must match the GPU machine's (PyPI's torch 2.11 and 2.13 are CUDA
# 13.0 builds); nvcc of the same CUDA major version must be on the PATH. Only the CUDA kernels
# that alpr's models call are compiled (NMS, RoIAlign, and the few that other C++ files link
# to directly): all of mmcv's take about an hour on 2 cores, these about 30 minutes. The other
# ops keep their CPU code. ALL_OPS=1 compiles every kernel.
set -euo pipefail
python=$1
torch_version=$2
arch=${3:-9.0}
out=$(realpath -m "${4:-.whl}")
build=${BUILD_DIR:-/tmp/mmcv-cuda-build}
mkdir -p "$build" "$out"
cd "$build"

test -x venv/bin/python || "$python" -m venv venv
venv/bin/pip install -q "torch==$torch_version" setuptools==69.5.1 wheel ninja numpy
test -d mmcv-2.1.0 || { venv/bin/pip download -q --no-deps --no-binary :all: --no-build-isolation mmcv==2.1.0 -d . \
    && tar xzf mmcv-2.1.0.tar.gz; }

kernels=mmcv-2.1.0/mmcv/ops/csrc/pytorch/cuda
if [ "${ALL_OPS:-0}" != 1 ] && [ ! -f cudabind.full.cpp ]; then
    cp $kernels/cudabind.cpp cudabind.full.cpp
    mkdir -p unused
    # NMS and RoIAlign for the models; the others are called by name from C++ files outside cudabind.cpp.
    for file in $kernels/*.cu; do
        case $(basename "$file") in
            nms_cuda.cu|roi_align_cuda.cu|nms_rotated_cuda.cu|nms_quadri_cuda.cu|spconv_ops_cuda.cu|\
            sparse_indice.cu|sparse_reordering.cu) ;;
            *) mv "$file" unused/ ;;
        esac
    done
    # cudabind.cpp registers every kernel; keep its includes and the NMS and RoIAlign blocks.
    python3 - "$kernels/cudabind.cpp" <<'EOF'
import re, sys
from pathlib import Path
path = Path(sys.argv[1])
text = Path("cudabind.full.cpp").read_text()
blocks = re.split(r"\n(?=\S[^\n]*(?:CUDAKernelLauncher|CUDAKernel)\()", text)
head = blocks[0].split("\n\n")[0]  # the #include lines
wanted = [b for b in blocks[1:] if re.match(r"\S[^\n]*\b(NMSCUDAKernelLauncher|ROIAlign(Forward|Backward)CUDAKernelLauncher)\(", b)]
path.write_text(head + "\n\n" + "\n".join(wanted))
assert "REGISTER_DEVICE_IMPL(nms_impl, CUDA, nms_cuda)" in path.read_text()
assert "REGISTER_DEVICE_IMPL(roi_align_backward_impl, CUDA, roi_align_backward_cuda)" in path.read_text()
EOF
fi

# torch's CUDA headers include cusparse.h & co., which ship in the nvidia wheels, not always with nvcc;
# nvcc's own headers come first (the wheels' cuda_runtime_api.h lacks the crt/ folder it includes).
# nvcc may be a wrapper outside its CUDA folder (libcudart too): it names that folder itself (TOP).
site=$(venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cuda_top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')
export CPATH=$cuda_top/include:$(ls -d "$site"/nvidia/cu*/include 2>/dev/null | head -1)${CPATH:+:$CPATH}
export LIBRARY_PATH=$cuda_top/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}
cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
(cd mmcv-2.1.0 && FORCE_CUDA=1 MMCV_WITH_OPS=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=$(nproc) \
    CUDA_HOME=$cuda_home ../venv/bin/python setup.py -q bdist_wheel -d ../dist)

# Without debug symbols the wheel is 2 MB instead of 33.
rm -rf unpacked && venv/bin/python -m wheel unpack -d unpacked dist/mmcv-2.1.0-*.whl
strip --strip-debug unpacked/mmcv-2.1.0/mmcv/_ext*.so
venv/bin/python -m wheel pack -d "$out" unpacked/mmcv-2.1.0
rm -rf check && venv/bin/pip install -q --no-deps --target check "$out"/mmcv-2.1.0-*.whl
# loads the extension (it links against torch and the CUDA runtime) without mmcv's other needs (cv2)
venv/bin/python -c "import glob, importlib.util, torch
spec = importlib.util.spec_from_file_location('mmcv._ext', glob.glob('check/mmcv/_ext*.so')[0])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert hasattr(module, 'nms')" && echo "built: $(ls "$out"/mmcv-2.1.0-*.whl)"
