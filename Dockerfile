# syntax=docker/dockerfile:1
# mmserve image: the official Ray image (the Ray version mmserve is tested with) + mmserve,
# its built-in plugins and their bundled weights. Runs as Ray's non-root user (uid 1000).
#
#   docker build -t mmserve:0.1.0 .                                   # CPU
#   docker build -t mmserve:0.1.0-gpu --build-arg RAY_VARIANT=gpu .   # CUDA (Ray's default CUDA)
#   docker build --build-arg RAY_VARIANT=cu128 ...                    # a specific CUDA build
#
# For a small CPU image, install CPU-only torch wheels:
#   --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index>
# Third-party plugins: derive from this image (see helm/mmserve/README.md).
#
# RAY_VERSION must equal the chart's ray.version (KubeRay's rayVersion); tests/helm checks it.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG RAY_VARIANT=cpu

# ---- build: a wheel of mmserve (server, registry, plugins and bundled weights) -------------
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${RAY_VARIANT} AS build
ARG RAY_VERSION
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 server/ server/
COPY --chown=1000:100 registry/ registry/
COPY --chown=1000:100 plugins/ plugins/
# The wheel must carry the bundled weights, or a fresh cluster has nothing to serve.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels . \
    && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/home/ray/wheels/mmserve-*.whl')[0]).namelist(); sys.exit(0 if any(n.endswith('captioning/weights/weights.safetensors') for n in names) else 'bundled weights missing from the wheel')" \
    && echo "ray[serve]==${RAY_VERSION}" > /home/ray/wheels/constraints.txt

# ---- runtime ------------------------------------------------------------------------------
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${RAY_VARIANT}
ARG RAY_VERSION
ARG TORCH_INDEX_URL=""
LABEL org.opencontainers.image.title="mmserve" \
      org.opencontainers.image.description="Multimodal model server on Ray Serve, with built-in plugins and bundled weights" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.ray.version="${RAY_VERSION}"

COPY --from=build --chown=1000:100 /home/ray/wheels /tmp/wheels
# The constraint keeps the base image's Ray: pip must not move it off RAY_VERSION.
# boto3 and psycopg2-binary let the chart's MLflow server use S3 artifacts and PostgreSQL.
RUN pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        --constraint /tmp/wheels/constraints.txt \
        /tmp/wheels/mmserve-*.whl \
        boto3==1.44.5 psycopg2-binary==2.9.13 \
    && rm -rf /tmp/wheels \
    && python -c "import ray, mmserve.plugins.captioning.plugin; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

USER 1000:100
WORKDIR /home/ray
EXPOSE 8000
# Docker's health check for the embedded server (the CMD). On Kubernetes the chart's probes
# and KubeRay's apply instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]
# KubeRay replaces the command with `ray start`; without it, the embedded server.
CMD ["mmserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
