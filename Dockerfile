# users-api image.
#
#   docker build -t users-api .
#   docker run --rm -p 8000:8000 --read-only users-api     # SQLite needs a writable /var/lib/users-api
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) ->
# deps (the dependencies alone, built from the recipe) -> builder (the crate)
# -> rootfs (on the slim image: the runtime's root file system) -> runtime
# (from scratch: the binary, the C runtime it links, CA bundles; no shell, no
# package manager). The deps layer is rebuilt only when the recipe changes
# (Cargo.toml / Cargo.lock), not on every source edit. Every step after deps
# copies its multi-GB file system under storage drivers that keep full copies
# (vfs), so the builder has two steps and the rest happens on the slim image.

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
RUN cargo build --release --locked --bin users-api

# Same Debian release as the builder, so ldd resolves the glibc the binary was linked against.
FROM debian:bookworm-slim AS rootfs
# Amazon RDS's CA bundle (every region), so that DATABASE_CA_FILE can verify
# the database's certificate. The URL is a build argument only so that tests
# without internet access can serve a stand-in.
ARG RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
# hadolint ignore=DL3020 # the source is a URL (in a build argument), which only ADD fetches
ADD ${RDS_CA_BUNDLE_URL} /tmp/rds-global-bundle.pem
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /src/target/release/users-api /out/usr/local/bin/users-api
# The slim image has no CA bundle of its own: the builder's (JWKS over HTTPS).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt
# The runtime's root file system under /out: the shared libraries ldd
# resolves for the binary (glibc, libgcc_s: whatever the architecture's
# paths); the RDS bundle; a passwd entry for the fixed uid.
RUN ldd /out/usr/local/bin/users-api | grep -o '/[^ ]*' | sort -u \
        | xargs -I{} cp --parents --dereference {} /out/ \
    && grep -q 'BEGIN CERTIFICATE' /tmp/rds-global-bundle.pem \
    && install -D -m 0644 /tmp/rds-global-bundle.pem /out/etc/ssl/certs/rds-global-bundle.pem \
    && printf 'users-api:x:10001:10001::/var/lib/users-api:/sbin/nologin\n' >/out/etc/passwd \
    && printf 'users-api:x:10001:\n' >/out/etc/group \
    && install -d -m 0750 /out-data/users-api \
    && install -d -m 1777 /out/tmp

FROM scratch AS runtime
COPY --from=rootfs /out/ /
# The one writable place (the default SQLite file users.db), owned by the
# fixed numeric uid/gid, so that Kubernetes/ECS runAsNonRoot checks and volume
# ownership work.
COPY --from=rootfs --chown=10001:10001 /out-data/users-api/ /var/lib/users-api/

# Nothing is written outside the working directory, so the root file system
# can be mounted read-only; mount a volume on /var/lib/users-api when using
# SQLite.
WORKDIR /var/lib/users-api
ENV BIND_ADDR=0.0.0.0:8000 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/users-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/users-api"]
CMD ["serve"]
