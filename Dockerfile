# syntax=docker/dockerfile:1
# sandgate: multi-stage build. The build stage compiles a release binary; the runtime image is
# distroless (glibc + CA certificates, no shell, no package manager) and runs as a non-root user.
#   docker build --build-arg SANDGATE_COMMIT="$(git rev-parse --short=12 HEAD)" -t sandgate .
#   docker run --rm -p 8080:8080 -v "$PWD/deploy/docker/sandgate.toml:/etc/sandgate/sandgate.toml:ro" sandgate
FROM rust:1.88-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them: a stub crate with the real manifest.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
# The build context has no .git: the commit `sandgate --version` prints comes from this argument.
ARG SANDGATE_COMMIT=unknown
ENV SANDGATE_COMMIT=${SANDGATE_COMMIT}
COPY build.rs ./
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && install -D -m 0755 target/release/sandgate /out/sandgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sandgate /usr/local/bin/sandgate
COPY deploy/docker/sandgate.toml /etc/sandgate/sandgate.toml
# 65532 is distroless's `nonroot`; ports above 1024 need no capability.
USER 65532:65532
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/sandgate"]
CMD ["serve", "--config", "/etc/sandgate/sandgate.toml"]
