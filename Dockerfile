# drove's container image: `docker build -t drove .` in a checkout of drove's source
# (`drove export dockerfile` prints this file). The manifests of `drove export k8s` and
# `drove export compose` run it as drove:latest: `drove up -c /etc/drove/drove.toml`
# (drove in front of the replicas), and `drove demo` for the built-in demo's instances.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The release profile (LTO, one codegen unit) is what the benchmarks measure.
RUN cargo build --release --locked --bin drove \
 && install -m 0755 target/release/drove /usr/local/bin/drove

FROM debian:bookworm-slim
# drove needs only libc; ca-certificates for rediss:// limits, curl for the health checks
# the exported Compose file runs in services that use this image (`drove demo`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin drove
COPY --from=build /usr/local/bin/drove /usr/local/bin/drove
USER 10001
# The balancer (listen) and the admin API with /metrics (admin.listen) by default.
EXPOSE 8080 9900
ENTRYPOINT ["drove"]
CMD ["up", "-c", "/etc/drove/drove.toml"]
