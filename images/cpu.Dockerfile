# The CPU step image: the alpr package, steps/ and the whole dependency set, run as a non-root user.
# Build from the repository root:  docker build -f images/cpu.Dockerfile -t REGISTRY/alpr-cpu:VERSION .
FROM python:3.11.11-slim-bookworm AS build

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt requirements-build.txt requirements-headless.txt ./
# mmengine and mmcv require opencv-python, whose Qt build needs libGL, which the runtime stage has not:
# keep the headless one alone.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.txt \
    && pip install -r requirements-build.txt \
    && pip install --no-build-isolation mmcv==2.1.0 \
    && pip uninstall -y opencv-python \
    && pip install --no-deps --force-reinstall -r requirements-headless.txt
COPY pyproject.toml README.md ./
COPY src ./src
COPY steps ./steps
RUN pip install --no-deps --no-build-isolation .

FROM python:3.11.11-slim-bookworm
# git: DVC versions datasets in a git repository, on a volume whose root is root's (the step runs as 1000):
# git refuses a repository there as of "dubious ownership" unless told that every directory is safe.
# The DejaVu fonts: synth draws with the system's fonts, so a seed gives the same images as on a dev machine.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git fonts-dejavu-core fonts-dejavu-extra \
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
