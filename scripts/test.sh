#!/usr/bin/env bash
# Install everything the tests need, then run them. The browser tests drive Debian's
# Chromium; it, and Node.js for the extension's build, come from the distribution when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The JupyterLab extension is built by pip install with Node.js (18 or newer).
NEED=""
if [ ! -x /usr/bin/chromium ]; then NEED="chromium"; fi
if ! command -v node >/dev/null; then NEED="$NEED nodejs npm"; fi
if [ -n "$NEED" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $NEED >/dev/null
fi
python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
