# syntax=docker/dockerfile:1
# outbox-relay image, two stages:
#  1. builder: rust:1-bookworm compiles the release binary. rdkafka-sys builds the bundled
#     librdkafka from source (C toolchain, cmake, OpenSSL and zlib headers).
#  2. runtime: debian:bookworm-slim with only the shared libraries the binary links
#     (libssl3, zlib) and CA certificates for TLS to brokers; runs as an unprivileged user.
# Build: docker build -t outbox-relay .   Run: docker run outbox-relay run (configure with
# OUTBOX_RELAY_* variables or a mounted --config file).

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares bench targets; cargo wants their sources present.
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin outbox-relay \
 && install -s -m 0755 target/release/outbox-relay /usr/local/bin/outbox-relay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin outbox-relay
COPY --from=builder /usr/local/bin/outbox-relay /usr/local/bin/outbox-relay
USER 10001
ENV OUTBOX_RELAY_METRICS_LISTEN=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["outbox-relay"]
CMD ["run"]
