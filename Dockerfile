# syntax=docker/dockerfile:1
# gancho's container image: one binary, every role (`gancho api|router|worker|...`).
#   docker build -t gancho:0.1.0 .
# The build stage compiles with the Rust toolchain (protox compiles the .proto files, so no
# protoc is needed); the runtime stage is distroless: glibc, no shell, user 65532.

FROM rust:1.87-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gancho \
    && install -D -m 0755 target/release/gancho /out/gancho

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gancho /usr/local/bin/gancho
# Listen on every interface inside the container (the binary's defaults are 127.0.0.1).
ENV GANCHO_API_LISTEN=0.0.0.0:8080 \
    GANCHO_METRICS_LISTEN=0.0.0.0:9090 \
    GANCHO_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gancho"]
CMD ["--help"]
