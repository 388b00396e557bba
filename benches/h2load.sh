#!/usr/bin/env bash
# Validate against grpc.health.v1.Health/Check on the same release server,
# with the same load generator (h2load, Debian's nghttp2-client), in one run:
# prints each side's requests/s per round, the medians, and their ratio.
# With Python's xds-protos installed, Envoy's ext_authz Check of the same key
# runs in the same rounds, against Validate.
#
# Every Validate does what a backend's would: the caller's key is
# authenticated (keyward:validate), the validated key has a rate limit (high
# enough never to refuse) and a required permission is checked.
#
#   bash benches/h2load.sh              # 5 rounds each, interleaved
#   ROUNDS=3 REQUESTS=100000 bash benches/h2load.sh
#
# Needs h2load (apt-get install nghttp2-client) and python3 (to encode one
# protobuf message).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
REQUESTS="${REQUESTS:-200000}"
CONNECTIONS="${CONNECTIONS:-8}"
STREAMS="${STREAMS:-32}"

command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
cargo build --release --quiet --bin keyward
cargo build --release --quiet -p keywardctl
target="${CARGO_TARGET_DIR:-target}/release"

dir="$(mktemp -d)"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
RUST_LOG=error "$target/keyward" serve --listen "127.0.0.1:$port" \
  --database-url "sqlite://$dir/keyward.db" --bootstrap-key-file "$dir/admin.key" &
server=$!
for _ in $(seq 100); do
  [ -s "$dir/admin.key" ] && "$target/keywardctl" --server "$url" --admin-key-file "$dir/admin.key" \
    roles list >/dev/null 2>&1 && break
  sleep 0.1
done

ctl() { "$target/keywardctl" --server "$url" --admin-key-file "$dir/admin.key" --output json "$@"; }
key_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
caller="$(ctl mint --role validator | key_of)"
validated="$(ctl mint --permission deploy:read --rate 1000000/s --burst 1000000 | key_of)"

# A gRPC message: no compression, 4-byte length, then the protobuf.
python3 - "$validated" "$dir/validate.bin" "$dir/health.bin" <<'EOF'
import struct, sys
def field(number, text):
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data
message = field(1, sys.argv[1]) + field(2, "deploy:read")
open(sys.argv[2], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
open(sys.argv[3], "wb").write(b"\0" + struct.pack(">I", 0))
EOF

# Requests per second of one h2load run against PATH with BODY.
run() {
  h2load -n "$REQUESTS" -c "$CONNECTIONS" -m "$STREAMS" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $caller" -d "$2" "$url$1" 2>/dev/null |
    awk '/^finished in/ { gsub(",", "", $4); print $4 }
         /^requests:/ && $10 != 0 { print "h2load: failed requests" > "/dev/stderr"; exit 1 }'
}

# Envoy's Check of the same key, when Envoy's Python types are at hand.
paths=(/grpc.health.v1.Health/Check /keyward.v1.KeyService/Validate)
names=(Health/Check Validate)
bodies=("$dir/health.bin" "$dir/validate.bin")
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
  paths+=(/envoy.service.auth.v3.Authorization/Check)
  names+=("ext_authz Check")
  bodies+=("$dir/check.bin")
else
  echo "xds-protos is missing: ext_authz Check is left out (pip install xds-protos)"
fi

# One warm-up of each, not counted.
for i in "${!paths[@]}"; do run "${paths[$i]}" "${bodies[$i]}" >/dev/null; done

declare -A results
for round in $(seq "$ROUNDS"); do
  # Each round starts with another path, so none always runs first.
  line="round $round:"
  for step in "${!paths[@]}"; do
    i=$(( (step + round) % ${#paths[@]} ))
    rate="$(run "${paths[$i]}" "${bodies[$i]}")"
    results[$i]+="$rate "
    line+=" ${names[$i]} ${rate} req/s,"
  done
  echo "${line%,}"
done

python3 - "${results[0]}" "${results[1]}" "${results[2]:-}" <<'EOF'
import statistics, sys
health, validate, check = ([float(x) for x in arg.split()] for arg in sys.argv[1:4])
h, v = statistics.median(health), statistics.median(validate)
print(f"median: Health/Check {h:.0f} req/s, Validate {v:.0f} req/s, Validate / Health = {v / h:.3f}")
if check:
    c = statistics.median(check)
    print(f"median: ext_authz Check {c:.0f} req/s, Check / Validate = {c / v:.3f}")
EOF
