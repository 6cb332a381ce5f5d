#!/usr/bin/env bash
# Build every image `docker compose up` needs, online or air-gapped.
#
# Online (the official python image can be pulled): the service images build on it and pip
# reaches PyPI; Prometheus, the Pushgateway and Grafana are pulled.
# Air-gapped (no registry answers): mmdebstrap builds a Debian bookworm root with python3 and
# `docker import`s it as the base; Python dependencies are downloaded from PyPI on the host as
# wheels into deploy/wheels and installed with --no-index; Prometheus and the Pushgateway come
# from Debian's packages in a second local image, Redis (the trackers' shared registry) in a third. There is no Grafana package in Debian, so
# Grafana is left out: its service sits behind the `grafana` Compose profile, which .env turns
# on only when a Grafana image is there, so a plain `docker compose up` works either way.
#
# The choice is written to .env, which docker compose reads.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.2}
PUSHGATEWAY_IMAGE=${PUSHGATEWAY_IMAGE:-prom/pushgateway:v1.9.0}
GRAFANA_IMAGE=${GRAFANA_IMAGE:-grafana/grafana:11.2.0}
REDIS_IMAGE=${REDIS_IMAGE:-redis:7.2-bookworm}
LOCAL_BASE=p2p-base:bookworm
LOCAL_MONITORING=p2p-monitoring:bookworm
LOCAL_REDIS=p2p-redis-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
PIP=${PIP:-.venv/bin/pip}

say() { printf '==> %s\n' "$*"; }
# docker build, quiet when it works (the legacy builder's deprecation notice included), loud when not.
build() { local out; if ! out=$(docker build --quiet "$@" 2>&1 >/dev/null); then echo "$out" >&2; return 1; fi; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
pull() { have_image "$1" || timeout 300 docker pull --quiet "$1" >/dev/null 2>&1; }

# debootstrap_image NAME PACKAGES HOOK [DOCKER-IMPORT-CHANGES...]: a minimal bookworm root as
# an image; HOOK runs in the root ($1) before it is packed.
debootstrap_image() {
  local name=$1 packages=$2 hook=$3; shift 3
  have_image "$name" && return 0
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  say "building $name from Debian packages: $packages"
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="$hook" \
    bookworm "$tmp/rootfs.tar" \
    "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
    "deb $DEBIAN_SECURITY bookworm-security main"
  local changes=(--change 'ENV LANG=C.UTF-8')
  for c in "$@"; do changes+=(--change "$c"); done
  docker import "${changes[@]}" "$tmp/rootfs.tar" "$name" >/dev/null
}

if pull "$PYTHON_IMAGE"; then
  mode=online
  base=$PYTHON_IMAGE
  offline=0
else
  mode=air-gapped
  say "no registry reachable: building local base images"
  debootstrap_image "$LOCAL_BASE" python3,python3-venv,ca-certificates true
  base=$LOCAL_BASE
  offline=1
  say "downloading Python wheels into deploy/wheels"
  # Wheels for the image's Python (3.11, manylinux x86_64/aarch64), whatever Python runs here;
  # async-timeout named because redis-py needs it on Debian's Python 3.11.2 only (< 3.11.3).
  # aiohttp is the peer's HTTP gateway; pip follows its dependencies (aiohappyeyeballs,
  # aiosignal, attrs, frozenlist, multidict, propcache, yarl, idna), pinned in constraints.txt.
  "$PIP" download --quiet --dest deploy/wheels --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform "manylinux_2_17_$(uname -m)" --platform "manylinux2014_$(uname -m)" --platform any \
    -c constraints.txt pydantic pydantic-settings structlog prometheus-client sortedcontainers rich uvloop redis async-timeout setuptools \
    aiohttp
fi

for service in tracker seeder leecher peer; do
  say "building p2p-$service ($mode, base $base)"
  build --tag "p2p-$service:latest" --target "$service" \
    --build-arg "BASE_IMAGE=$base" --build-arg "OFFLINE=$offline" .
done

grafana=1
if [ "$mode" = online ] && pull "$PROMETHEUS_IMAGE" && pull "$PUSHGATEWAY_IMAGE"; then
  pull "$GRAFANA_IMAGE" || grafana=0
else
  debootstrap_image "$LOCAL_MONITORING" prometheus,prometheus-pushgateway \
    'mkdir -p "$1/prometheus" && chown 65534:65534 "$1/prometheus"'
  say "tagging local Prometheus and Pushgateway images"
  build --tag p2p-prometheus:local --build-arg "BASE=$LOCAL_MONITORING" \
    --file deploy/prometheus/Dockerfile.prometheus deploy/prometheus
  build --tag p2p-pushgateway:local --build-arg "BASE=$LOCAL_MONITORING" \
    --file deploy/prometheus/Dockerfile.pushgateway deploy/prometheus
  PROMETHEUS_IMAGE=p2p-prometheus:local
  PUSHGATEWAY_IMAGE=p2p-pushgateway:local
  have_image "$GRAFANA_IMAGE" || grafana=0
fi

if [ "$mode" = online ] && pull "$REDIS_IMAGE"; then
  :
else
  debootstrap_image "$LOCAL_REDIS" redis-server true
  say "tagging a local Redis image"
  build --tag p2p-redis:local --build-arg "BASE=$LOCAL_REDIS" --file deploy/redis/Dockerfile.redis deploy/redis
  REDIS_IMAGE=p2p-redis:local
fi

cat > .env <<ENV
# Written by deploy/build-images.sh ($mode); docker compose reads it.
BASE_IMAGE=$base
OFFLINE=$offline
PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
PUSHGATEWAY_IMAGE=$PUSHGATEWAY_IMAGE
REDIS_IMAGE=$REDIS_IMAGE
GRAFANA_IMAGE=$GRAFANA_IMAGE
GRAFANA_AVAILABLE=$grafana
COMPOSE_PROFILES=$([ "$grafana" = 1 ] && echo grafana)
ENV
say "images ready ($mode); settings in .env"
