# qkvd container: build on Debian bookworm, run on bookworm-slim with only the
# runtime libraries, as an unprivileged user, models on a volume.
#   docker build -t qkvd .
#   docker run -p 8080:8080 -v $PWD/models:/models:ro -e QKVD_MODEL=/models/model.gguf qkvd
# Every `qkvd serve` option is also an environment variable QKVD_<NAME>
# (upper case, dashes as underscores: --max-seqs -> QKVD_MAX_SEQS, --api-key ->
# QKVD_API_KEY, --grace-period -> QKVD_GRACE_PERIOD); `docker run IMAGE --help`
# lists them all. scripts/container-check replays these steps without a
# container engine (same packages, same make commands, same user) and CI runs it:
# keep the two in step.

FROM debian:bookworm AS build
# Build packages only (scripts/install-deps.sh also installs the test tools).
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential pkg-config libmicrohttpd-dev libuv1-dev libjansson-dev \
      libopenblas-dev libpcre2-dev libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" all && make install DESTDIR=/out PREFIX=/usr/local

FROM debian:bookworm-slim
# Runtime libraries of build/qkvd (checked with ldd by scripts/container-check),
# plus curl for the HEALTHCHECK. No init is needed: qkvd handles SIGTERM itself
# (so it works as PID 1) and starts no child processes to reap.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libmicrohttpd12 libuv1 libjansson4 libopenblas0-pthread libpcre2-8-0 libcurl4 \
      curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 qkvd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin qkvd \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /out/usr/local /usr/local
USER 10001:10001
VOLUME ["/models"]
# Listen on every interface of the container; the model file is expected on
# the volume (override with -e QKVD_MODEL=... or `-m` after the image name).
# The grace period stays below Docker's default 10 s stop timeout minus a
# margin; raise both together (docker stop -t / stop_grace_period).
ENV QKVD_HOST=0.0.0.0 \
    QKVD_PORT=8080 \
    QKVD_MODEL=/models/model.gguf \
    QKVD_GRACE_PERIOD=8
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${QKVD_PORT}/health" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/qkvd", "serve"]
