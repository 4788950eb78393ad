#!/usr/bin/env bash
# Installs Debian's nginx, for tests/test_deploy.py (the deploy/nginx snippet is
# checked with `nginx -t` and served through). Does nothing when nginx is on PATH.
#
#   bash scripts/install_nginx.sh
#
# Exit 0: `nginx` is on PATH (or in /usr/sbin). Exit 1: it is not, and the last
# line printed says why (not root, no apt-get, install failed), so the test
# can skip with that reason.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

if command -v nginx >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "cannot install nginx: no apt-get on this machine"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "cannot install nginx: apt-get needs root (run this script as root once)"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Another process (a parallel test run) may hold the dpkg lock: wait for it.
APT=(apt-get -q -y -o DPkg::Lock::Timeout=300)
# The package's post-install starts a system nginx on port 80 where it can;
# nothing here needs it, so policy-rc.d keeps services from being started.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod +x "$POLICY" && ADDED_POLICY=1
fi
# Stale or missing package lists: refresh once, only when the install needs it.
if ! "${APT[@]}" install --no-install-recommends nginx-light </dev/null \
   && ! "${APT[@]}" install --no-install-recommends nginx </dev/null; then
    "${APT[@]}" update </dev/null \
        && { "${APT[@]}" install --no-install-recommends nginx-light </dev/null \
             || "${APT[@]}" install --no-install-recommends nginx </dev/null; }
fi
if [ "$ADDED_POLICY" -eq 1 ]; then
    rm -f "$POLICY"
fi

if command -v nginx >/dev/null; then
    exit 0
fi
echo "cannot install nginx: apt-get install nginx-light (or nginx) failed"
exit 1
