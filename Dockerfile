# portcullis container image: a release build in the Rust image, copied into a
# distroless runtime (glibc, CA certificates, no shell, no package manager) that runs
# as the unprivileged user 65532.
#
#   docker build -t portcullis:0.1.0 .
#
# Not built in CI: the development machines have no container engine. The file is
# linted by tests/chart.rs (hadolint).

# The builder's Debian release must match the runtime's (bookworm = Debian 12) so the
# binary links against the same glibc.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# Sources only (.dockerignore keeps target/, .tools/ and .git out of the context).
# build.rs compiles proto/ with protox, so no system protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked --bin portcullis \
    && install -D -m 0755 target/release/portcullis /out/portcullis

# cc: glibc and libgcc, which the Rust binary links; the distroless base also ships
# /etc/ssl/certs/ca-certificates.crt for fetching keys over HTTPS.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# 9001: ext_authz gRPC and grpc.health.v1; 9002: admin HTTP.
EXPOSE 9001 9002
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/config/portcullis.yaml"]
