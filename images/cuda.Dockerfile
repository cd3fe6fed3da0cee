# The CUDA step image: as the CPU image, with torch's CUDA build and mmcv's CUDA ops.
# Build from the repository root:  docker build -f images/cuda.Dockerfile -t REGISTRY/alpr-cuda:VERSION .
# torch 2.13.0 from PyPI is built with CUDA 13.0: mmcv must be compiled with the same major version.
FROM nvidia/cuda:13.0.0-cudnn-devel-ubuntu22.04 AS build

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common build-essential git \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MMCV_WITH_OPS=1 FORCE_CUDA=1 \
    TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt requirements-build.txt requirements-headless.txt ./
# mmengine and mmcv require opencv-python, whose Qt build needs libGL, which the runtime stage has not:
# keep the headless one alone.
RUN pip install torch==2.13.0 \
    && pip install -r requirements.txt \
    && pip install -r requirements-build.txt \
    && pip install --no-build-isolation mmcv==2.1.0 \
    && pip uninstall -y opencv-python \
    && pip install --no-deps --force-reinstall -r requirements-headless.txt
COPY pyproject.toml README.md ./
COPY src ./src
COPY steps ./steps
RUN pip install --no-deps --no-build-isolation .

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04
# git: DVC versions datasets in a git repository, on a volume whose root is root's (the step runs as 1000):
# git refuses a repository there as of "dubious ownership" unless told that every directory is safe.
# The DejaVu fonts: synth draws with the system's fonts, so a seed gives the same images as on a dev machine.
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common git fonts-dejavu-core fonts-dejavu-extra \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 alpr \
    && git config --system --add safe.directory '*'
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=alpr:alpr steps ./steps
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 1000
ENTRYPOINT []
CMD ["alpr", "--help"]
