#!/usr/bin/env bash
# Instructions per call of Health/Check, Validate and ext_authz Check, counted
# by valgrind's callgrind on the release server: the same requests as
# benches/h2load.sh (same bodies, same caller, same keys), a fixed number of
# each, so the counts are the same whatever else the machine is doing. Use it
# to attribute costs and to compare builds on a shared machine; h2load.sh
# gives the throughput ratios.
#
#   bash benches/callgrind.sh               # 20,000 calls of each
#   CALLS=5000 KEEP=/tmp/cg bash benches/callgrind.sh
#   callgrind_annotate /tmp/cg/validate.out | head -60
#
# Only user-space instructions are counted (not the kernel's, nor time spent
# waiting); valgrind runs the server's threads one at a time.
# Needs valgrind, h2load (nghttp2-client), python3; ext_authz Check needs
# Python's xds-protos.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS="${CALLS:-20000}"
CONNECTIONS="${CONNECTIONS:-8}"
STREAMS="${STREAMS:-32}"

for tool in valgrind callgrind_control h2load; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
cargo build --release --quiet --bin keyward
cargo build --release --quiet -p keywardctl
target="${CARGO_TARGET_DIR:-target}/release"

dir="$(mktemp -d)"
keep="${KEEP:-}"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
  "$target/keyward" serve --listen "127.0.0.1:$port" \
  --database-url "sqlite://$dir/keyward.db" --bootstrap-key-file "$dir/admin.key" \
  2>"$dir/valgrind.log" &
server=$!
for _ in $(seq 600); do
  [ -s "$dir/admin.key" ] && "$target/keywardctl" --server "$url" --admin-key-file "$dir/admin.key" \
    roles list >/dev/null 2>&1 && break
  sleep 0.2
done

ctl() { "$target/keywardctl" --server "$url" --admin-key-file "$dir/admin.key" --output json "$@"; }
key_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
caller="$(ctl mint --role validator | key_of)"
validated="$(ctl mint --permission deploy:read --rate 1000000/s --burst 1000000 | key_of)"

# The bodies of benches/h2load.sh.
python3 - "$validated" "$dir/validate.bin" "$dir/health.bin" <<'EOF'
import struct, sys
def field(number, text):
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data
message = field(1, sys.argv[1]) + field(2, "deploy:read")
open(sys.argv[2], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
open(sys.argv[3], "wb").write(b"\0" + struct.pack(">I", 0))
EOF
names=(health validate)
paths=(/grpc.health.v1.Health/Check /keyward.v1.KeyService/Validate)
if python3 - "$validated" "$dir/check.bin" <<'EOF' 2>/dev/null; then
import struct, sys
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
Context = attribute_context_pb2.AttributeContext
request = external_auth_pb2.CheckRequest(attributes=Context(
    source=Context.Peer(address=address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=40000))),
    request=Context.Request(http=Context.HttpRequest(
        method="GET", path="/deploy", host="api.internal",
        headers={"authorization": "Bearer " + sys.argv[1]})),
    context_extensions={"keyward_permissions": "deploy:read"}))
message = request.SerializeToString()
open(sys.argv[2], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
EOF
  names+=(check)
  paths+=(/envoy.service.auth.v3.Authorization/Check)
else
  echo "xds-protos is missing: ext_authz Check is left out (pip install xds-protos)"
fi

run() {
  h2load -n "$1" -c "$CONNECTIONS" -m "$STREAMS" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $caller" -d "$dir/$3.bin" "$url$2" 2>/dev/null |
    awk '/^requests:/ && $10 != 0 { print "h2load: failed requests" > "/dev/stderr"; exit 1 }'
}

# Instructions (Ir) in the dump callgrind wrote last.
dumped() {
  local last
  last="$(ls -t "$dir"/cg.out.* | head -1)"
  awk '/^totals:/ { print $2 }' "$last"
  [ -n "$keep" ] && mkdir -p "$keep" && cp "$last" "$keep/$1.out"
  return 0
}

# A warm-up of each (connections, limiters and allocator pools settle),
# then a dump to start counting from.
for i in "${!paths[@]}"; do run 2000 "${paths[$i]}" "${names[$i]}"; done
callgrind_control -d warmup "$server" >/dev/null 2>&1
dumped warmup >/dev/null

declare -A per_call
for i in "${!paths[@]}"; do
  run "$CALLS" "${paths[$i]}" "${names[$i]}"
  callgrind_control -d "${names[$i]}" "$server" >/dev/null 2>&1
  total="$(dumped "${names[$i]}")"
  per_call[${names[$i]}]=$(( total / CALLS ))
  printf '%-9s %9d instructions per call\n' "${names[$i]}" "${per_call[${names[$i]}]}"
done
h=${per_call[health]} v=${per_call[validate]}
printf 'Validate - Health: %d; Validate / Health: %s\n' $(( v - h )) \
  "$(python3 -c "print(f'{$v / $h:.3f}')")"
if [ -n "${per_call[check]:-}" ]; then
  c=${per_call[check]}
  printf 'Check - Validate: %d; Check / Validate: %s\n' $(( c - v )) \
    "$(python3 -c "print(f'{$c / $v:.3f}')")"
fi
