#!/usr/bin/env bash
# Installs the peers bench/transfer.py runs beside computenet: iperf3, an sshd (for scp and
# rsync -e ssh) and rsync, from Debian packages. Idempotent.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
if command -v iperf3 >/dev/null && command -v rsync >/dev/null && [ -x /usr/sbin/sshd ]; then
    echo "iperf3, rsync and sshd already installed"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq iperf3 openssh-server openssh-client rsync >/dev/null
