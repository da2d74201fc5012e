#!/usr/bin/env bash
# Installs a single-node Slurm (slurmctld, slurmd, client tools) and munge from Debian packages.
# Idempotent: does nothing when the binaries are already on PATH.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

need=(slurmctld slurmd sbatch sinfo squeue scancel munged)
missing=()
for bin in "${need[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        missing+=("$bin")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm and munge already installed"
    exit 0
fi
echo "missing: ${missing[*]}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -E"
fi

pkgs=(slurmctld slurmd slurm-client munge)
if ! $SUDO apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "${pkgs[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "${pkgs[@]}"
fi

for bin in "${need[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        echo "still missing after install: $bin" >&2
        exit 1
    fi
done
echo "slurm and munge installed"
