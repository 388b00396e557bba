#!/usr/bin/env bash
# MintKey throughput over gRPC with many concurrent callers, on SQLite and on
# PostgreSQL: h2load (Debian's nghttp2-client) sends the same MintKeyRequest
# (a permission and a label, like a CI job's key) from CONNECTIONS x STREAMS
# callers at once to a release server; prints keys/s per round and the
# medians. keys/s counts the keys the database gained (and each must have its
# audit record), not HTTP responses: a gRPC error still answers HTTP 200.
#
#   bash benches/mint.sh                      # 5 rounds of 10,000 mints per store
#   ROUNDS=3 REQUESTS=5000 STORES=sqlite bash benches/mint.sh
#   KEYWARD_BIN=/path/to/keyward bash benches/mint.sh   # another build of the server
#
# PostgreSQL: a fresh database on POSTGRES (default
# postgres://postgres@127.0.0.1:5432) for the run, dropped after; needs psql.
# ANALYZE runs before each round (ANALYZE=0: not), as autovacuum would as the
# tables grow: a server with autovacuum off (like the one this was measured
# on) otherwise plans the feed's reads for the empty tables it started with,
# and scans whole tables, slower every round.
# Needs h2load, python3 (to encode one protobuf message) and sqlite3.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
REQUESTS="${REQUESTS:-10000}"
CONNECTIONS="${CONNECTIONS:-4}"
STREAMS="${STREAMS:-8}"
STORES="${STORES:-sqlite postgres}"
POSTGRES="${POSTGRES:-postgres://postgres@127.0.0.1:5432}"
ANALYZE="${ANALYZE:-1}"

command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}/release"
if [ -z "${KEYWARD_BIN:-}" ]; then
  cargo build --release --quiet --bin keyward
  KEYWARD_BIN="$target/keyward"
fi

dir="$(mktemp -d)"
server=""
database=""
stop_server() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
cleanup() {
  stop_server
  [ -n "$database" ] && psql -q "$POSTGRES/postgres" -c "DROP DATABASE IF EXISTS $database" >/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

# A gRPC message: no compression, 4-byte length, then the protobuf
# (permissions = 8: "deploy:read"; labels = 3: {"bench": "mint"}).
python3 - "$dir/mint.bin" <<'EOF'
import struct, sys
def field(number, data):
    return bytes([number << 3 | 2, len(data)]) + data
message = field(8, b"deploy:read") + field(3, field(1, b"bench") + field(2, b"mint"))
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
EOF

# Starts the server on database URL $1 and waits for its admin key.
start_server() {
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  url="http://127.0.0.1:$port"
  rm -f "$dir/admin.key"
  RUST_LOG=error "$KEYWARD_BIN" serve --listen "127.0.0.1:$port" \
    --database-url "$1" --bootstrap-key-file "$dir/admin.key" &
  server=$!
  for _ in $(seq 200); do
    [ -s "$dir/admin.key" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    sleep 0.1
  done
  admin="$(cat "$dir/admin.key")"
}

# Keys and mint audit records in the store ($1: sqlite or postgres).
counts() {
  local sql="SELECT (SELECT count(*) FROM api_keys) || ' ' || (SELECT count(*) FROM audit_log WHERE action = 'key.mint')"
  case "$1" in
    sqlite) sqlite3 "$dir/keyward.db" "$sql" ;;
    postgres) psql -qtA "$POSTGRES/$database" -c "$sql" ;;
  esac
}

# Seconds h2load took for REQUESTS mints.
run() {
  h2load -n "$1" -c "$CONNECTIONS" -m "$STREAMS" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $admin" -d "$dir/mint.bin" "$url/keyward.v1.AdminService/MintKey" 2>/dev/null |
    awk '/^finished in/ { t = $3; sub(",", "", t)
                          if (t ~ /ms$/) { sub("ms", "", t); t /= 1000 } else sub("s", "", t)
                          print t }
         /^requests:/ && $10 != 0 { print "h2load: failed requests" > "/dev/stderr"; exit 1 }'
}

for store in $STORES; do
  case "$store" in
    sqlite) rm -f "$dir"/keyward.db*; start_server "sqlite://$dir/keyward.db" ;;
    postgres)
      database="keyward_bench_mint_$$"
      psql -q "$POSTGRES/postgres" -c "CREATE DATABASE $database" >/dev/null
      start_server "$POSTGRES/$database" ;;
    *) echo "unknown store $store (sqlite or postgres)" >&2; exit 1 ;;
  esac
  run 500 >/dev/null # warm-up, not counted
  rates=""
  for round in $(seq "$ROUNDS"); do
    if [ "$store" = postgres ] && [ "$ANALYZE" = 1 ]; then
      psql -q "$POSTGRES/$database" -c ANALYZE
    fi
    read -r keys_before audits_before <<<"$(counts "$store")"
    seconds="$(run "$REQUESTS")"
    read -r keys_after audits_after <<<"$(counts "$store")"
    minted=$((keys_after - keys_before))
    if [ "$minted" -ne "$REQUESTS" ] || [ $((audits_after - audits_before)) -ne "$REQUESTS" ]; then
      echo "$store round $round: $minted keys and $((audits_after - audits_before)) mint audit records for $REQUESTS requests" >&2
      exit 1
    fi
    rate="$(python3 -c "print(round($minted / $seconds))")"
    rates+="$rate "
    echo "$store round $round: $minted keys in ${seconds}s, $rate keys/s"
  done
  python3 -c "import statistics, sys; print(f'$store median: {statistics.median(map(float, sys.argv[1:])):.0f} keys/s ($CONNECTIONS connections x $STREAMS streams, $ROUNDS rounds of $REQUESTS)')" $rates
  stop_server
  if [ "$store" = postgres ]; then
    psql -q "$POSTGRES/postgres" -c "DROP DATABASE $database" >/dev/null
    database=""
  fi
done
