#!/usr/bin/env bash
# Builds the release binaries: static (CGO_ENABLED=0, no libc needed),
# stripped, with the version stamped in, for every system the proxy's
# users run, plus SHA256SUMS.
#
#   bash scripts/release.sh [VERSION]     (default: git describe)
#
# Output: dist/emailproxy-VERSION-OS-ARCH[.exe] and dist/SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
rm -rf dist && mkdir dist
for target in linux/amd64 linux/arm64 windows/amd64 windows/arm64 darwin/arm64; do
  os=${target%/*} arch=${target#*/}
  out="dist/emailproxy-$version-$os-$arch"
  [ "$os" = windows ] && out="$out.exe"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath \
    -ldflags "-s -w -X github.com/emailproxy/emailproxy/cmd/internal/cli.version=$version" \
    -o "$out" ./cmd/emailproxy
  echo "built $out"
done
(cd dist && sha256sum emailproxy-* > SHA256SUMS)
cat dist/SHA256SUMS
