# qkvd container: build on Debian bookworm, run on bookworm-slim with only the
# runtime libraries. Models live on a volume mounted at /models.
#   docker build -t qkvd .
#   docker run -p 8080:8080 -v $PWD/models:/models -e QKVD_MODEL=/models/model.gguf qkvd
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh
COPY . .
RUN make -j"$(nproc)" all && make install DESTDIR=/out PREFIX=/usr/local

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libmicrohttpd12 libuv1 libjansson4 libopenblas0-pthread libpcre2-8-0 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent qkvd \
    && mkdir -p /models && chown qkvd /models
COPY --from=build /out/usr/local /usr/local
USER qkvd
VOLUME ["/models"]
ENV QKVD_HOST=0.0.0.0 QKVD_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/qkvd", "serve"]
