#!/usr/bin/env bash
# Regenerates the Go and Python code of the bridge from bridge/proto with
# pinned tools. Output: bridge/gen/ (Go) and pyshim/swiftmoe/_proto/ (Python).
# Usage: scripts/genproto.sh [OUTROOT]   (OUTROOT defaults to the repo root;
# the staleness check generates into a temporary root and diffs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
tools=$root/.tools
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GRPCIO_TOOLS_VERSION=1.85.1

need_go_tool() { # name module version
  local bin=$tools/$1 stamp=$tools/$1.version
  if [ ! -x "$bin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$3" ]; then
    echo "genproto: installing $1 $3" >&2
    GOBIN=$tools go install "$2@$3"
    echo "$3" > "$stamp"
  fi
}
mkdir -p "$tools"
need_go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go $PROTOC_GEN_GO_VERSION
need_go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION
have=$(python3 -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)
if [ "$have" != "$GRPCIO_TOOLS_VERSION" ]; then
  echo "genproto: grpcio-tools $GRPCIO_TOOLS_VERSION is required (found '${have:-none}'): pip install grpcio-tools==$GRPCIO_TOOLS_VERSION" >&2
  exit 1
fi

# Go: bridge/gen/swiftmoe/v1
mkdir -p "$out/bridge/gen"
python3 -m grpc_tools.protoc -I "$root/bridge/proto" \
  --plugin=protoc-gen-go="$tools/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$tools/protoc-gen-go-grpc" \
  --go_out="$out/bridge/gen" --go_opt=paths=source_relative \
  --go-grpc_out="$out/bridge/gen" --go-grpc_opt=paths=source_relative \
  swiftmoe/v1/swiftmoe.proto

# Python: the proto is staged under swiftmoe/_proto/ so that the generated
# imports read "from swiftmoe._proto.v1 import swiftmoe_pb2".
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/swiftmoe/_proto/v1"
cp "$root/bridge/proto/swiftmoe/v1/swiftmoe.proto" "$stage/swiftmoe/_proto/v1/"
mkdir -p "$out/pyshim"
python3 -m grpc_tools.protoc -I "$stage" \
  --python_out="$out/pyshim" --pyi_out="$out/pyshim" --grpc_python_out="$out/pyshim" \
  swiftmoe/_proto/v1/swiftmoe.proto
