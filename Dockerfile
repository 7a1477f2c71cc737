# One image for every Huitou service: `huitou serve customer|loyalty|coupon|notification`,
# `huitou migrate <service>`. Build: docker build -t huitou:TAG .
#
# Stage 1 compiles the dependencies alone (a layer reused until a manifest or
# Cargo.lock changes), stage 2 the workspace, stage 3 is the runtime: a slim
# Debian with CA certificates and an unprivileged user, nothing else.
# Not built in CI here (no Docker engine on this machine): CI checks that the
# dependency stage names every workspace member (scripts/check-dockerfile.sh);
# see docs/deploy.md.
FROM rust:1.95-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY libs/proto/Cargo.toml libs/proto/
COPY libs/runtime/Cargo.toml libs/runtime/
COPY libs/storage/Cargo.toml libs/storage/
COPY libs/privacy/Cargo.toml libs/privacy/
COPY libs/testkit/Cargo.toml libs/testkit/
COPY services/customer/Cargo.toml services/customer/
COPY services/loyalty/Cargo.toml services/loyalty/
COPY services/coupon/Cargo.toml services/coupon/
COPY services/notification/Cargo.toml services/notification/
COPY services/huitou/Cargo.toml services/huitou/
COPY tests/Cargo.toml tests/
COPY benches/Cargo.toml benches/
# Empty crate roots: this layer compiles only the dependencies, and is
# reused until a manifest or the lock file changes.
RUN for d in libs/proto libs/runtime libs/storage libs/privacy libs/testkit \
        services/customer services/loyalty services/coupon services/notification \
        services/huitou tests; do \
      mkdir -p $d/src && touch $d/src/lib.rs; done \
 && echo "fn main() {}" > services/huitou/src/main.rs \
 && mkdir -p benches/src && echo "fn main() {}" > benches/src/main.rs \
 && cargo build --release --locked -p huitou --bin huitou

FROM deps AS build
COPY . .
# The real sources are newer than the stubs, so cargo rebuilds just them.
RUN find libs services tests benches -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p huitou --bin huitou \
 && install -D target/release/huitou /out/huitou

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin huitou
COPY --from=build /out/huitou /usr/local/bin/huitou
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/huitou"]
CMD ["serve", "customer"]
