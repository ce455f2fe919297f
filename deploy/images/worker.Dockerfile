# The ccfleet-worker image, for builders with internet access:
#
#   docker build -f deploy/images/worker.Dockerfile -t ccfleet-worker \
#     --build-arg VERSION=$(version) --build-arg GIT_SHA=$(git rev-parse HEAD) .
#
# Offline (no image pulled, no internet), deploy/images/build makes the same image: it
# builds the binary and the root filesystem on the host with deploy/images/rootfs, then uses
# the part of this file below the "image" marker as it is, with the root filesystem as the
# build context.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ccfleet-worker \
 && deploy/images/rootfs /rootfs target/release/ccfleet-worker

# ---- image ----
FROM scratch
COPY --from=build /rootfs/ /
# COPY makes everything root's; the one directory the process writes is its own.
COPY --from=build --chown=10001:10001 /rootfs/var/lib/ /var/lib/
ARG VERSION=dev
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="ccfleet-worker" \
      org.opencontainers.image.description="ccfleet worker: runs Claude Code sessions" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$GIT_SHA" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV CCFLEET__WORKER__METRICS_LISTEN=0.0.0.0:9090 \
    CCFLEET__WORKER__SESSIONS_DIR=/var/lib/ccfleet/sessions
# Non-root; every path it writes (/tmp, /var/lib/ccfleet) can be a volume, so the root
# filesystem can be read-only.
USER 10001:10001
WORKDIR /var/lib/ccfleet
EXPOSE 9090
# The binary is PID 1 and handles SIGTERM itself: it drains, then exits (a second signal
# exits at once). Run with `--init` (compose: `init: true`) only if something else in the
# container forks.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/ccfleet-worker", "--probe", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["/usr/local/bin/ccfleet-worker"]
