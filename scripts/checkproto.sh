#!/usr/bin/env bash
# Fails when the committed generated code differs from what scripts/genproto.sh makes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/genproto.sh" "$tmp" >/dev/null
status=0
for d in bridge/gen pyshim/swiftmoe/_proto/v1; do
  if ! diff -r -x '__pycache__' -x '__init__.py' "$tmp/$d" "$root/$d"; then status=1; fi
done
if [ $status -ne 0 ]; then
  echo "checkproto: generated code is stale: run 'make proto' and commit the result" >&2
  exit 1
fi
echo "checkproto: generated code is up to date"
