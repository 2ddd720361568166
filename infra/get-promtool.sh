#!/bin/sh
# Unpack promtool (Prometheus's config and PromQL checker) from Debian's `prometheus` package
# into the folder given, without installing the package. No PyPI package ships promtool.
# Best effort: where apt-get is missing or cannot fetch, say so and exit 0 (the promtool tests
# then skip; the pydantic checks of the Prometheus config still run).
set -eu
dest=${1:?usage: get-promtool.sh DEST_DIR}
if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool: no apt-get on this machine; the promtool tests will be skipped"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    echo "promtool: 'apt-get download prometheus' failed; the promtool tests will be skipped"
    exit 0
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
cp "$tmp/root/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -n 1
