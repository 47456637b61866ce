#!/usr/bin/env bash
# Installs what the browser and metrics tests need from Debian: chromium (headless screenshot
# of the status page), chromium-driver (chromedriver: the review page tests click through the
# page; no browser is downloaded) and promtool (from the `prometheus` package). Idempotent:
# skips what is already there. Needs root (CI runs as root) or sudo.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  echo "chromium, chromedriver and promtool already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg (other builders on the same machine) instead of failing.
lock=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${lock[@]}" update -qq
$sudo apt-get "${lock[@]}" install -y -qq --no-install-recommends "${need[@]}"
/usr/bin/chromium --version
/usr/bin/chromedriver --version
promtool --version | head -1
