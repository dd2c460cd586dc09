#!/usr/bin/env bash
# Install the package with its test dependencies (and the Node.js interop clients and Chromium), then run every test.
# Exit code 5 from pytest ("no tests collected") is a failure here, never a silent green.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e '.[test]'
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/interop/node --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
fi
# The HTML report is checked in headless Chromium (Debian's package), installed here when missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; the HTML report test will fail" >&2
fi
.venv/bin/ruff check src tests bench
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
