#!/usr/bin/env bash
# The README's steps in one go, on a throwaway stack: up, register, serve the quoter over A2A,
# start both agents, publish one trip, show the result, the trace and the runs, then stop
# everything this script started. Needs relaybus and mcp-server-time on PATH (an activated venv).
set -euo pipefail
cd "$(dirname "$0")"

export RELAYBUS_HOME="${RELAYBUS_HOME:-$(mktemp -d)/home}"
export RELAYBUS_IDENTITY=1 RELAYBUS_LEDGER=1
logs="$RELAYBUS_HOME/../logs"
mkdir -p "$logs"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    relaybus down >/dev/null 2>&1 || true
}
trap cleanup EXIT

relaybus up --detach
relaybus identity agent add quoter >/dev/null
relaybus identity agent add travel_planner --scope mcp/time/get_current_time --scope a2a/quoter >/dev/null
relaybus identity user add alice --scope mcp/time/get_current_time --scope a2a/quoter >/dev/null
relaybus identity user add traveldesk >/dev/null
alice_token=$(relaybus identity user token alice)
export QUOTER_TOKEN
QUOTER_TOKEN=$(relaybus identity user token traveldesk)

# the quoter over A2A on any free port; its URL goes into a copy of sources.toml
relaybus a2a serve --agent quoter --http 127.0.0.1:0 >"$logs/a2a.out" 2>"$logs/a2a.log" &
pids+=($!)
url=""
for _ in $(seq 150); do  # at most 30 s
    url=$(grep -o 'http://127.0.0.1:[0-9]*/agents/quoter' "$logs/a2a.out" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.2
done
[ -n "$url" ] || { echo "relaybus a2a serve did not start; see $logs/a2a.log" >&2; exit 1; }
sed "s#http://127.0.0.1:8090/agents/quoter#$url#" sources.toml >"$RELAYBUS_HOME/sources.toml"

relaybus agent run agents:Quoter 2>"$logs/quoter.log" &
pids+=($!)
RELAYBUS_DATA_SOURCES="$RELAYBUS_HOME/sources.toml" \
    relaybus agent run agents:TravelPlanner 2>"$logs/travel_planner.log" &
pids+=($!)

out=$(relaybus publish travel_planner '{"destination": "tokyo", "timezone": "Asia/Tokyo", "nights": 3}' \
    --as alice --token "$alice_token" --wait --json --timeout 90)
echo "$out"
run_id=$(python -c 'import json, sys; print(json.loads(sys.argv[1])["run_id"])' "$out")
relaybus trace "$run_id"
relaybus runs --limit 2
