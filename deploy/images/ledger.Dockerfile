# The ledger image, ghcr.io/example/bridle-ledger. Build from the repository root:
#
#   docker build -f deploy/images/ledger.Dockerfile -t ghcr.io/example/bridle-ledger:0.1.0 .
#
# Not built in CI (no container daemon there); keep the toolchain at or above the
# workspace's rust-version.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Every workspace member must be present for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY core core
COPY cli cli
COPY ledger ledger
COPY tests tests
RUN cargo build --release --locked -p bridle-ledger \
 && install -D -m 0755 target/release/bridle-ledger /out/bridle-ledger

# glibc and libgcc, nothing else: no shell, no package manager. Runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bridle-ledger /usr/local/bin/bridle-ledger
USER 65532:65532
EXPOSE 8181
ENTRYPOINT ["/usr/local/bin/bridle-ledger"]
