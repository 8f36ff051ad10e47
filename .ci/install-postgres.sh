#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for tests/integration/test_archive_backends.py.
# The tests start their own throw-away cluster (initdb + postgres on a random 127.0.0.1
# port, as the `postgres` user when run as root) and stop it by its pid; the package's
# default cluster is neither created nor started here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

have_server() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 &&
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1
}

if ! have_server; then
  # no default cluster "main" (postgresql-common reads this before its postinst runs)
  mkdir -p /etc/postgresql-common
  conf=/etc/postgresql-common/createcluster.conf
  if [ -e "$conf" ] && grep -q '^[[:space:]]*create_main_cluster' "$conf"; then
    sed -i 's/^[[:space:]]*create_main_cluster.*/create_main_cluster = false/' "$conf"
  else
    echo "create_main_cluster = false" >>"$conf"
  fi
  # and no service started by the maintainer scripts
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
    postgresql >/dev/null
  if [ "$created_policy" = 1 ]; then
    rm -f "$policy"
  fi
fi
id postgres >/dev/null  # the harness runs the server as this user when it runs as root
"$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/postgres" --version
