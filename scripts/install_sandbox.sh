#!/usr/bin/env bash
# bubblewrap (bwrap) runs each local job in a sandbox that hides computenet's own files
# from it (docs/jobs.md). Installed from Debian's packages where this user can; else the
# agent says loudly that jobs run without one.
set -uo pipefail
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 &&
  apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; then
  echo "bubblewrap installed"
else
  echo "bubblewrap (bwrap) is not installed and could not be: local jobs will run" \
    "without a sandbox until it is (apt-get install bubblewrap)" >&2
fi
exit 0
