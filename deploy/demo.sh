#!/usr/bin/env bash
# The demo: a real gateway in network namespaces. Builds subscriber / gateway / internet hosts,
# starts an origin in the internet namespace and swarmcache on the gateway (transparent
# interception, no client configuration), fetches one file twice from the subscriber with curl
# and prints what happened, then once more under a tokenised URL (a fingerprint match); 50
# subscribers listen to one live stream (one upstream connection); then three unconfigured
# BitTorrent clients fetch a torrent through the box (deploy/demo_bt.py). Everything is torn down at the end, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ "${SKIP_INSTALL:-0}" = 1 ] || ./deploy/install-deps.sh
size_mib=${DEMO_MIB:-64}
prefix="dm$(printf "%04x" $((RANDOM % 65536)))"
work=$(mktemp -d /tmp/swarmcache-demo.XXXXXX)
SUB="ip netns exec ${prefix}sub"; GW="ip netns exec ${prefix}gw"; NET="ip netns exec ${prefix}net"
cleanup() {
  [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  ./deploy/testbed.sh down "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
./deploy/testbed.sh up "$prefix"
mkdir -p "$work/www" "$work/cache"
cat > "$work/demo.toml" <<'TOML'
[bittorrent]
listen = "10.77.1.1:6881"
steering = true
admit_min_local_peers = 1

[live]
url_patterns = ["http://10.77.2.3/live/*"]
TOML
head -c "$((size_mib << 20))" /dev/urandom > "$work/www/video.bin"
echo '{"/video.bin": {"Cache-Control": "max-age=3600"}}' > "$work/www/.headers.json"
$NET python3 deploy/origin.py --bind 10.77.2.2 --port 80 --root "$work/www" \
  --log "$work/origin.log" > "$work/origin.out" 2>&1 &
$GW python3 -m swarmcache run --config "$work/demo.toml" --cache-dir "$work/cache" \
  --subscribers 10.77.1.0/24 \
  --admin-listen 127.0.0.1:9480 --proxy-listen 10.77.1.1:3128 \
  --access-log "$work/access.log" > "$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
  $GW curl -sf -o /dev/null http://127.0.0.1:9480/healthz && $NET curl -sf -o /dev/null \
    http://10.77.2.2/ && break
  sleep 0.1
done
$GW curl -sf -o /dev/null http://127.0.0.1:9480/healthz || { cat "$work/daemon.log"; exit 1; }
uplink_bytes() { $GW cat "/sys/class/net/${prefix}gn/statistics/rx_bytes"; }
fetch() { # n [url]
  local before after
  before=$(uplink_bytes)
  $SUB curl -s -D "$work/h$1" -o "$work/got$1" -w '%{time_total} %{size_download}' \
    "${2:-http://10.77.2.2/video.bin}" > "$work/w$1"
  after=$(uplink_bytes)
  read -r t n < "$work/w$1" || true  # curl -w writes no newline
  printf 'fetch %d: %-4s %s bytes in %6.3f s (%7.1f MB/s); uplink carried %s bytes\n' "$1" \
    "$(grep -i '^x-cache:' "$work/h$1" | tr -d '\r' | cut -d' ' -f2)" "$n" "$t" \
    "$(python3 -c "print($n/1e6/max($t,1e-9))")" "$((after - before))"
}
echo "== swarmcache demo: subscriber 10.77.1.2 -> gateway -> origin 10.77.2.2 (${size_mib} MiB file)"
fetch 1
fetch 2
echo "-- the same file under another URL (a session token): found by fingerprint, confirmed"
echo "   with 4 random Range samples from the origin, then served from the stored copy"
fetch 3 "http://10.77.2.2/video.bin?session=7f3a91"
want=$(sha256sum < "$work/www/video.bin" | cut -d' ' -f1)
for i in 1 2 3; do
  got=$(sha256sum < "$work/got$i" | cut -d' ' -f1)
  [ "$got" = "$want" ] && echo "fetch $i: sha256 matches the origin's file" \
    || { echo "fetch $i: sha256 MISMATCH"; exit 1; }
done
echo "origin saw $(grep -c '"path": "/video.bin"' "$work/origin.log") request(s) for /video.bin"
echo "== access log"; sleep 1.2; cat "$work/access.log"
echo "== metrics"
$GW curl -s http://127.0.0.1:9480/metrics | grep -E '^swarmcache_(http_requests_total|http_saved_bytes_total|http_upstream_bytes_total|store_)' | grep -v -e ' 0.0$' -e '_created'
echo "== operator CLI: swarmcache stats"
$GW python3 -m swarmcache stats
echo "== live stream: 50 subscribers on one radio stream from 10.77.2.3 (5 s)"
$NET ip addr add 10.77.2.3/24 dev "${prefix}n"
$NET python3 tests/netns/live_origin.py --bind 10.77.2.3 --log "$work/live.log" \
  > "$work/live.out" 2>&1 &
for _ in $(seq 50); do $NET ss -Hltn 'src 10.77.2.3:80' | grep -q LISTEN && break
  sleep 0.1; done
$SUB python3 tests/netns/live_clients.py --host 10.77.2.3 --path /live/radio.mp3 \
  --clients 50 --duration 5 > "$work/live.json"
python3 - "$work/live.json" "$work/live.log" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))["fast_summary"]
opens = [e["peer"] for e in map(json.loads, open(sys.argv[2])) if e.get("event") == "open"]
box = [p for p in opens if p.startswith("10.77.2.1:")]
print(f"{out['clients']} clients, median {out['median_records']} records each, "
      f"{out['with_jumps']} with gaps, {out['with_errors']} with errors; the origin saw "
      f"{len(box)} connection(s) from the box and {len(opens) - len(box)} from anywhere else")
PY
python3 deploy/demo_bt.py --prefix "$prefix" --work "$work" --mib "${DEMO_BT_MIB:-32}"
