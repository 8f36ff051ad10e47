#!/usr/bin/env bash
# Debian's `prometheus` package: the prometheus binary for tests/e2e/test_prometheus.py (the
# dashboard proof) and promtool for tests/chart/test_alerts.py (`promtool test rules`).
# The test starts its own Prometheus on a random port; the packaged system service must
# not stay running (it would hold :9090, the services' default HTTP port).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

stop_system_service() {
  # invoke-rc.d / service only know about it when an init script is installed
  if [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  # a daemon left from the package's postinst: stop it by the pid it recorded
  for pidfile in /run/prometheus/prometheus.pid /run/prometheus.pid /var/run/prometheus.pid; do
    if [ -s "$pidfile" ]; then
      pid="$(cat "$pidfile")"
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q prometheus; then
        kill "$pid" 2>/dev/null || true
      fi
      rm -f "$pidfile"
    fi
  done
}

if ! command -v prometheus >/dev/null 2>&1; then
  # keep the package's maintainer scripts from starting the service at all
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ "$created_policy" = 1 ]; then
    rm -f "$policy"
  fi
fi
stop_system_service
prometheus --version 2>&1 | head -n 1
