# users-api image.
#
#   docker build -t users-api .
#   docker run --rm -p 8000:8000 --read-only users-api     # SQLite needs a writable /var/lib/users-api
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) ->
# deps (the dependencies alone, built from the recipe) -> builder (the crate)
# -> runtime (debian-slim, the binary, non-root). The deps layer is rebuilt
# only when the recipe changes (Cargo.toml / Cargo.lock), not on every
# source edit.

FROM rust:1.95-bookworm AS chef
WORKDIR /src
RUN cargo install cargo-chef --locked --version 0.1.78 \
    && rm -rf "$CARGO_HOME/registry"

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS deps
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json

FROM deps AS builder
COPY . .
RUN cargo build --release --locked --bin users-api \
    && install -D -m 0755 target/release/users-api /out/users-api

FROM debian:bookworm-slim AS runtime
# A fixed numeric uid/gid, so that Kubernetes/ECS runAsNonRoot checks and
# volume ownership work without a passwd lookup.
RUN groupadd --system --gid 10001 users-api \
    && useradd --system --uid 10001 --gid users-api --no-create-home \
        --home-dir /var/lib/users-api --shell /usr/sbin/nologin users-api \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/users-api
# Root CAs for outgoing TLS (JWKS, RDS) without installing anything here.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/users-api /usr/local/bin/users-api

# Nothing is written outside the working directory (default SQLite file
# users.db lives there), so the root file system can be mounted read-only;
# mount a volume on /var/lib/users-api when using SQLite.
WORKDIR /var/lib/users-api
ENV BIND_ADDR=0.0.0.0:8000 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/users-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/users-api"]
CMD ["serve"]
