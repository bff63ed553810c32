# GPU image: CUDA runtime + bunny with its training, serving and GPU extras.
#   docker build -t bunny .
#   docker run --gpus all -it bunny python -m bunny.serve.cli --help
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv python3-dev git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/bunny
COPY . .
RUN python3 -m pip install --upgrade pip packaging ninja wheel \
    && python3 -m pip install -e ".[train,serve]" \
    && python3 -m pip install --no-build-isolation -e ".[gpu]"

CMD ["bash"]
