#!/usr/bin/env bash
# The container test tier's needs: Debian's docker.io and debootstrap, a running Docker
# engine (no bridge, no iptables: containers use --network host), and the locally built
# base image (no image can be pulled here; with AGENTBUS_BASE_IMAGE naming an image that is
# already there, e.g. a pulled python:3.12-slim, that one is used). Idempotent and quiet.
#
# The engine started here is left running for the test run that follows (.ci/run); its
# pid is in /run/agentbus-dockerd.pid. Stop it with: kill "$(cat /run/agentbus-dockerd.pid)".
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# A Docker that is already installed (a CI runner's own) is used as it is.
need=()
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  need+=(docker.io)
fi
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}"
  log="$(mktemp)"
  if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
fi

bash .ci/start-dockerd.sh
bash .ci/build-base-image.sh
