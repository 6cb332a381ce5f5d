#!/bin/sh
# p2p-as-owner COMMAND...: run COMMAND as the owner of the download folder, so that the file
# lands owned by whoever owns the folder on the host (./downloads of a fresh clone is the
# user's), whoever runs Compose and without any uid setting. A folder owned by root (one that
# Docker created for a missing bind mount) is first given to the image's p2p user. Started as
# any other user, it runs COMMAND as that user.
set -eu
if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi
dir=${P2P_OUTPUT_DIR:-/downloads}
mkdir -p "$dir"
if [ "$(stat -c %u "$dir")" = 0 ]; then
  chown p2p:p2p "$dir"
fi
exec setpriv --reuid="$(stat -c %u "$dir")" --regid="$(stat -c %g "$dir")" --clear-groups "$@"
