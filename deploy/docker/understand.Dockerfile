# syntax=docker/dockerfile:1
# The understand service's image: `pacsflow understand`, the model, on TensorFlow. The generate
# service (`pacsflow generate serve`, synthetic images) runs in it too: the chart gives it this
# image with that command.
#
# pacsflow is linked against TensorFlow's C library from a TensorFlow wheel, exactly as the
# local build does it (scripts/build.sh: need_go, need_tensorflow, go build with the
# tensorflow tag), with the reference model baked in at /opt/pacsflow/model. Run as the
# non-root user 65532. Build from the repository root:
#
#   docker build -f deploy/docker/understand.Dockerfile --build-arg TF_VARIANT=gpu -t pacsflow-understand:0.1.0-gpu .
#   docker build -f deploy/docker/understand.Dockerfile --build-arg TF_VARIANT=cpu -t pacsflow-understand:0.1.0-cpu .
#   docker build -f deploy/docker/understand.Dockerfile --build-arg TF_VARIANT=pjrt -t pacsflow-understand:0.1.0-pjrt .
#
# TF_VARIANT=cpu (default): the tensorflow-cpu wheel scripts/deps.sh installs (TF_PACKAGE).
# TF_VARIANT=gpu: the tensorflow[and-cuda] wheel (TensorFlow built with CUDA, and NVIDIA's CUDA
# and cuDNN libraries as pip packages); the binary is built against it with TF_DIR, as
# docs/model.md describes, and the NVIDIA libraries are put on the loader's path. The GPU node
# provides the driver (the NVIDIA device plugin / container toolkit mounts it).
# TF_VARIANT=pjrt: the CPU build, plus the model's StableHLO modules (model/export_stablehlo.py,
# run here at build time with the CPU wheel) and NVIDIA's PJRT plugin with its CUDA libraries
# (jax[cuda12]: the jax-cuda12-pjrt wheel's xla_cuda_plugin.so and the nvidia-* wheels it
# loads), at /opt/pacsflow/pjrt/xla_cuda_plugin.so; the chart runs it with --model-runtime pjrt
# (docs/gpu.md).
# MODEL: a model directory in the build context to bake in instead of the reference model.
# The python image is the TensorFlow runtime base; build and run stages share the path of the
# venv (/opt/pacsflow/.venv), which the binary's rpath names.
ARG GO_VERSION=1.26
ARG PYTHON_VERSION=3.11

FROM golang:${GO_VERSION}-bookworm AS go

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TF_VARIANT=cpu
ARG TF_VERSION=2.21.0
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local
WORKDIR /opt/pacsflow
COPY go.mod go.sum ./
RUN go mod download
# TensorFlow first (the large layer, rebuilt only when scripts/deps.sh changes): the CPU wheel
# through need_tensorflow itself, the CUDA wheel by TF_VARIANT=gpu.
COPY scripts/deps.sh scripts/deps.sh
RUN if [ "$TF_VARIANT" = gpu ]; then \
      python3 -m venv .venv && .venv/bin/pip install --no-cache-dir "tensorflow[and-cuda]==${TF_VERSION}"; \
    else \
      bash -c '. scripts/deps.sh && need_tensorflow'; \
    fi
# What ./cmd/pacsflow is built from (its packages and embedded files), the build scripts and
# the model.
COPY cmd/ cmd/
COPY internal/ internal/
COPY model/ model/
COPY pkg/ pkg/
COPY schemas/ schemas/
COPY services/ services/
COPY scripts/ scripts/
RUN if [ "$TF_VARIANT" = gpu ]; then \
      export TF_DIR="$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("tensorflow").submodule_search_locations[0])')"; \
    fi \
 && ./scripts/build.sh
# The pjrt variant's StableHLO, derived from the model that the image carries.
ARG MODEL=model/reference
COPY ${MODEL} /opt/pacsflow/export
RUN mkdir -p /opt/pacsflow/export/stablehlo \
 && if [ "$TF_VARIANT" = pjrt ]; then .venv/bin/python model/export_stablehlo.py --model /opt/pacsflow/export; fi

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG TF_VARIANT=cpu
ARG MODEL=model/reference
COPY --from=build /opt/pacsflow/.venv /opt/pacsflow/.venv
COPY --from=build /opt/pacsflow/bin/pacsflow /usr/local/bin/pacsflow
COPY ${MODEL} /opt/pacsflow/model
COPY --from=build /opt/pacsflow/export/stablehlo /opt/pacsflow/model/stablehlo
# The GPU variant: CUDA and cuDNN from the wheel's nvidia packages on the loader's path. The
# pjrt variant: NVIDIA's PJRT plugin, which finds the CUDA wheels beside it.
ARG JAX_VERSION=0.11.2
RUN if [ "$TF_VARIANT" = gpu ]; then \
      ls -d /opt/pacsflow/.venv/lib/python*/site-packages/nvidia/*/lib > /etc/ld.so.conf.d/pacsflow-nvidia.conf && ldconfig; \
    elif [ "$TF_VARIANT" = pjrt ]; then \
      /opt/pacsflow/.venv/bin/pip install --no-cache-dir "jax[cuda12]==${JAX_VERSION}" \
      && mkdir -p /opt/pacsflow/pjrt \
      && ln -s "$(/opt/pacsflow/.venv/bin/python -c 'import jax_plugins.xla_cuda12 as p, os; print(os.path.dirname(p.__file__))')/xla_cuda_plugin.so" /opt/pacsflow/pjrt/xla_cuda_plugin.so; \
    fi
# The model fills the contract (no TensorFlow needed for the check); on CPU, also load it and
# run each signature once, which proves the binary finds TensorFlow.
RUN if [ "$TF_VARIANT" = gpu ] || [ "$TF_VARIANT" = pjrt ]; then \
      /usr/local/bin/pacsflow model inspect /opt/pacsflow/model; \
    else \
      /usr/local/bin/pacsflow model inspect --run /opt/pacsflow/model; \
    fi
ENV TF_CPP_MIN_LOG_LEVEL=1 HOME=/tmp
WORKDIR /opt/pacsflow
USER 65532:65532
# HTTP: /metrics, /healthz, /readyz (with --http-addr): understand 8081, generate 8083.
EXPOSE 8081 8083
ENTRYPOINT ["/usr/local/bin/pacsflow"]
CMD ["understand", "--help"]
