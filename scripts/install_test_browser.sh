#!/usr/bin/env bash
# Bring the browser that the page's tests (tests/web/test_web_browser.py) drive: Debian's or Ubuntu's Chromium
# from the system package manager. Playwright's own browser download is never used. Does nothing when a
# Chromium is already on PATH (or UNCLIP_CHROMIUM names one). Part of the README's test command.
set -euo pipefail

if [ -n "${UNCLIP_CHROMIUM:-}" ] && [ -x "${UNCLIP_CHROMIUM}" ]; then
  exit 0
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is missing and this system has no apt-get: install Chromium with your package manager" >&2
  echo "(or set UNCLIP_CHROMIUM=/path/to/chromium) and run the tests again." >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "Chromium is missing and cannot be installed here (not root, no password-less sudo):" >&2
  echo "  sudo apt-get install -y chromium    then run the tests again." >&2
  exit 1
fi
echo "installing Chromium for the browser tests: apt-get install -y chromium" >&2
if ! { ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         chromium >/dev/null; }; then
  echo "apt-get install chromium failed (see above); the browser tests need it." >&2
  exit 1
fi
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || {
  echo "apt-get finished but no chromium is on PATH" >&2
  exit 1
}
