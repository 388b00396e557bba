#!/usr/bin/env bash
# Validate against grpc.health.v1.Health/Check on the same release server,
# with the same load generator (h2load, Debian's nghttp2-client), in one run:
# prints each side's requests/s per round, the medians, and their ratio.
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
cargo build --release --quiet --bin keyward --bin keywardctl
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
         /^requests:/ && $8 != 0 { print "h2load: failed requests" > "/dev/stderr"; exit 1 }'
}

# One warm-up of each, not counted.
run /grpc.health.v1.Health/Check "$dir/health.bin" >/dev/null
run /keyward.v1.KeyService/Validate "$dir/validate.bin" >/dev/null

health=()
validate=()
for round in $(seq "$ROUNDS"); do
  # A B B A: neither side always runs first.
  if (( round % 2 )); then
    health+=("$(run /grpc.health.v1.Health/Check "$dir/health.bin")")
    validate+=("$(run /keyward.v1.KeyService/Validate "$dir/validate.bin")")
  else
    validate+=("$(run /keyward.v1.KeyService/Validate "$dir/validate.bin")")
    health+=("$(run /grpc.health.v1.Health/Check "$dir/health.bin")")
  fi
  echo "round $round: Health/Check ${health[-1]} req/s, Validate ${validate[-1]} req/s"
done

python3 - "${health[*]}" "${validate[*]}" <<'EOF'
import statistics, sys
health = [float(x) for x in sys.argv[1].split()]
validate = [float(x) for x in sys.argv[2].split()]
h, v = statistics.median(health), statistics.median(validate)
print(f"median: Health/Check {h:.0f} req/s, Validate {v:.0f} req/s, Validate / Health = {v / h:.3f}")
EOF
