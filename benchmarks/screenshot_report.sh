#!/usr/bin/env bash
# Screenshot an `equal report` page in headless Chromium: the visual check of the report (not a test).
#
#   benchmarks/screenshot_report.sh RUN/report.html [OUT.png] [WIDTHxHEIGHT]
#
# Needs Chromium (Debian: `apt-get install -y chromium`). The page loads nothing from the network, so the
# screenshot is exactly what a user sees offline. Look at the PNG afterwards.
set -euo pipefail
page=${1:?usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-/tmp/report.png}
size=${3:-1400x3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium on PATH (apt-get install -y chromium)" >&2; exit 1; }
abs=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$out" \
  --window-size="${size/x/,}" "file://$abs" 2>/dev/null
echo "$out"
