# The four service images, one stage per role. Build from the repository root:
#   docker build --target tracker .      (or seeder, leecher, peer; `make images` and compose do)
# Layers go from what changes least to what changes most. The protocol library and its
# dependencies are installed from shared/, constraints.txt and the wheels alone, and every role
# copies that venv in one layer; each role then adds only its own package (and the leecher and
# the peer their own dependencies), installed in a build stage of its own. So a change to one service rebuilds
# the last layers of that role's image and nothing of the others (tests/docker/test_image_layers.py).
#
# BASE_IMAGE: the official slim Python by default; `make images` passes a locally built Debian
# base when no registry is reachable. OFFLINE=1 installs only from deploy/wheels (no index).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The protocol library and its dependencies, in a venv. The role build stages start from this
# one, so its pip settings hold for them too.
FROM ${BASE_IMAGE} AS shared-build
ARG OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INDEX=${OFFLINE} \
    PIP_FIND_LINKS=/wheels PIP_CONSTRAINT=/src/constraints.txt PIP_NO_WARN_SCRIPT_LOCATION=1
COPY deploy/wheels/ /wheels/
COPY constraints.txt /src/
COPY shared/ /src/shared/
RUN python3 -m venv /opt/p2p && /opt/p2p/bin/pip install /src/shared

# What every role runs on: the p2p user, and the venv in one layer.
FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /home/p2p --create-home --shell /usr/sbin/nologin p2p
COPY --from=shared-build /opt/p2p /opt/p2p
ENV PATH=/opt/p2p/bin:$PATH PYTHONUNBUFFERED=1 P2P_LOG_FORMAT=json

# The long-running services: tracker, seeder and peer.
FROM runtime AS service
ENV P2P_HEALTH_FILE=/tmp/p2p-healthy
# Healthy while the service keeps its health file fresh (every 5 s): a look at the file's age,
# no probe connection and no Python started per check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD test -n "$(find "$P2P_HEALTH_FILE" -newermt '-20 seconds' 2>/dev/null)"

# A role's build stage installs its package into the venv under /install, as the venv lays it
# out; p2p-shared is installed already, so only what the role adds lands there, and its image
# copies just that.
FROM shared-build AS tracker-build
COPY services/tracker/ /src/services/tracker/
RUN /opt/p2p/bin/pip install --root /install /src/services/tracker

FROM service AS tracker
COPY --from=tracker-build /install/opt/p2p/ /opt/p2p/
USER p2p
EXPOSE 6969/udp 9101
ENTRYPOINT ["p2p-tracker"]

FROM shared-build AS seeder-build
COPY services/seeder/ /src/services/seeder/
RUN /opt/p2p/bin/pip install --root /install /src/services/seeder

FROM service AS seeder
# A named volume mounted at /seed starts with this folder's owner, so the demo-file job can write it.
RUN mkdir -p /seed /home/p2p/.cache && chown p2p:p2p /seed /home/p2p/.cache
COPY --from=seeder-build /install/opt/p2p/ /opt/p2p/
USER p2p
EXPOSE 7000 9102
ENTRYPOINT ["p2p-seeder"]

FROM shared-build AS leecher-build
COPY services/leecher/ /src/services/leecher/
RUN /opt/p2p/bin/pip install --root /install /src/services/leecher

FROM runtime AS leecher
RUN mkdir -p /downloads && chown p2p:p2p /downloads
COPY deploy/leecher-entrypoint.sh /usr/local/bin/p2p-as-owner
COPY --from=leecher-build /install/opt/p2p/ /opt/p2p/
WORKDIR /downloads
EXPOSE 9103
# Starts as root only to become the owner of the download folder (see the script); never runs
# the download as root.
ENTRYPOINT ["p2p-as-owner", "p2p-leecher"]

FROM shared-build AS peer-build
COPY services/peer/ /src/services/peer/
RUN /opt/p2p/bin/pip install --root /install /src/services/peer

FROM service AS peer
# The cache: a volume goes here (one per container under Compose, per node under Swarm, an
# emptyDir under Kubernetes); one mounted empty starts with this folder's owner.
ENV P2P_CACHE_DIR=/cache
# Inside a container the gateway must answer on the container's network, not its loopback; who
# may use it is still only loopback unless P2P_HTTP_ALLOW names more. The Compose file, the stack
# and the DaemonSet start the peer through p2p-allow-attached-networks, which adds the container's
# own networks (README, "The peer's gateway in a container").
ENV P2P_HTTP_HOST=0.0.0.0
RUN mkdir -p /cache && chown p2p:p2p /cache
COPY deploy/attached-networks.py /usr/local/bin/p2p-allow-attached-networks
COPY --from=peer-build /install/opt/p2p/ /opt/p2p/
USER p2p
EXPOSE 7001 7080 9104
ENTRYPOINT ["p2p-peer"]
