#!/usr/bin/env bash
# Build the local base image the container tests build the Dockerfile on: no registry can
# be reached here, so `python:3.12-slim` cannot be pulled. A Debian bookworm minbase
# root filesystem with python3 (3.11, /usr/bin/python3), venv, pip and CA certificates is
# made by debootstrap, given this machine's CA bundle (pip inside `docker build` needs it),
# and imported as $AGENTBUS_BASE_IMAGE (default agentbus-base:bookworm).
#
# Cached twice: the image itself (nothing to do when it exists) and the root filesystem
# tarball under $AGENTBUS_CACHE_DIR (default /var/cache/agentbus), so a wiped Docker store
# costs an import, not a debootstrap.
set -euo pipefail

IMAGE="${AGENTBUS_BASE_IMAGE:-agentbus-base:bookworm}"
CACHE_DIR="${AGENTBUS_CACHE_DIR:-/var/cache/agentbus}"
TARBALL="$CACHE_DIR/base-bookworm-rootfs.tar"
MIRROR="${AGENTBUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi

mkdir -p "$CACHE_DIR"
if [ ! -s "$TARBALL" ]; then
  need=()
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
  if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need[@]}" >"$CACHE_DIR/apt.log" 2>&1 || { cat "$CACHE_DIR/apt.log" >&2; exit 1; }
  fi
  root="$(mktemp -d /var/tmp/agentbus-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm minbase -> $IMAGE (a few minutes, once)"
  if ! debootstrap --variant=minbase \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/debootstrap.log" >&2
    exit 1
  fi
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TARBALL" "$IMAGE" >/dev/null
echo "base image $IMAGE ready"
