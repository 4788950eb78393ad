#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver, for
# tests/test_browser.py. Does nothing when both are already on PATH.
#
#   bash scripts/install_chromium.sh
#
# Exit 0: `chromium` and `chromedriver` are on PATH. Exit 1: they are not,
# and the last line printed says why (not root, no apt-get, install failed),
# so the browser test can skip with that reason.
set -uo pipefail

have_both() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

if have_both; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "cannot install chromium: no apt-get on this machine"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "cannot install chromium: apt-get needs root (run this script as root once)"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Other processes (a parallel test run, unattended upgrades) may hold the dpkg
# lock: wait for it rather than fail.
APT=(apt-get -q -y -o DPkg::Lock::Timeout=300)

# A fresh machine's package lists may be missing or stale: refresh once, and
# only when the install does not find the packages without it.
if ! "${APT[@]}" install --no-install-recommends chromium chromium-driver </dev/null; then
    "${APT[@]}" update </dev/null \
        && "${APT[@]}" install --no-install-recommends chromium chromium-driver </dev/null
fi

if have_both; then
    exit 0
fi
echo "cannot install chromium: apt-get install chromium chromium-driver failed"
exit 1
