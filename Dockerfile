# syntax=docker/dockerfile:1
# gigastt container image. Guide: docs/deployment.md ("Docker").
#
#   docker build -t gigastt .                                    # model mounted at run time
#   docker build --build-arg GIGASTT_BAKE_MODEL=1 -t gigastt .   # model baked in (~1 GB more)
#   docker run --rm -p 127.0.0.1:9876:9876 -v gigastt-models:/home/gigastt/.gigastt/models gigastt
#
# Needs BuildKit (the default builder since Docker 23): it skips the model stage unless
# GIGASTT_BAKE_MODEL=1, and the wheels are bind-mounted, never copied into a layer.
# Inside the container gigastt listens on 0.0.0.0 (--bind-all), which is only safe because the
# container's port is published to loopback or reached only by a TLS/auth proxy (compose file).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG GIGASTT_BAKE_MODEL=0

# ---- builder: the gigastt wheel and the wheels of everything it needs -------------------------
FROM ${PYTHON_IMAGE} AS builder
# formats: FLAC/OGG/MP3 through soundfile; quantize: `gigastt download` can create the INT8 encoder.
ARG GIGASTT_EXTRAS=formats,quantize
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gigastt ./gigastt
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".[${GIGASTT_EXTRAS}]"

# ---- runtime: slim Python, the wheels, an unprivileged user ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/gigastt
RUN groupadd --system --gid 10001 gigastt \
    && useradd --system --uid 10001 --gid gigastt --home-dir /home/gigastt --create-home \
        --shell /usr/sbin/nologin gigastt \
    && mkdir -p /home/gigastt/.gigastt/models \
    && chown -R gigastt:gigastt /home/gigastt/.gigastt
# Every wheel in /wheels was built above from this source tree and its pinned ranges.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index /wheels/*.whl

# ---- model: empty (0) or downloaded at build time (1) ----------------------------------------
FROM runtime AS model-0

FROM runtime AS model-1
USER 10001:10001
RUN gigastt download --model-dir /home/gigastt/.gigastt/models

# A stage of this file chosen by the build-arg, not an image from a registry.
# hadolint ignore=DL3006
FROM model-${GIGASTT_BAKE_MODEL} AS model

# ---- final image ------------------------------------------------------------------------------
FROM runtime
COPY --from=model --chown=10001:10001 /home/gigastt/.gigastt/models /home/gigastt/.gigastt/models
# The numeric id of the gigastt user, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/gigastt
EXPOSE 9876
# gigastt drains on SIGTERM (docker stop): give it --shutdown-drain-secs + 5 (docker stop -t 15).
STOPSIGNAL SIGTERM
# No curl in the slim image: Python's urllib (any non-2xx or connection error exits 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9876/health', timeout=4)"]
ENTRYPOINT ["gigastt"]
CMD ["serve", "--host", "0.0.0.0", "--bind-all", "--port", "9876"]
