# syntax=docker/dockerfile:1
# eddy: a streaming SQL server that speaks the Postgres wire protocol.
#
#   docker build -t eddy .
#   docker run -p 4566:4566 -v eddy-data:/var/lib/eddy eddy
#   psql -h localhost -p 4566 -d eddy
#
# The first build compiles RocksDB and librdkafka from source (~15+ min);
# the BuildKit cache mounts below keep later builds incremental.

# ---- build ------------------------------------------------------------------
# rust:1 tracks the latest stable release; eddy needs Rust >= 1.94 (edition 2024).
FROM rust:1-bookworm AS build

# libclang: bindgen for rocksdb; libssl-dev + pkg-config: rdkafka's "ssl"
# feature; cmake: native builds of the -sys crates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ is listed as [[bench]] targets in Cargo.toml, so it must exist for
# cargo to parse the manifest (tests/ is only auto-discovered: not needed).
COPY benches/ benches/
COPY src/ src/

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin eddy \
 && cp target/release/eddy /usr/local/bin/eddy

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# libssl3: rdkafka links the system OpenSSL. libstdc++6 (RocksDB) and zlib1g
# (librdkafka) are already in the slim image; listed to make the need explicit.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates libstdc++6 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/eddy --shell /usr/sbin/nologin eddy \
 && mkdir -p /var/lib/eddy \
 && chown eddy:eddy /var/lib/eddy

COPY --from=build /usr/local/bin/eddy /usr/local/bin/eddy

USER eddy
# eddy's own default is 127.0.0.1:5433; in a container it must listen on all
# interfaces. EDDY_LISTEN / EDDY_DATA_DIR (or the flags) override these.
EXPOSE 4566
VOLUME /var/lib/eddy
ENV EDDY_LOG=info
CMD ["eddy", "--listen", "0.0.0.0:4566", "--data-dir", "/var/lib/eddy"]
