#!/usr/bin/env bash
# Run under `unshare -n`, in a network namespace of its own that has only loopback: Ray binds every
# interface it finds, so the only one there is 127.0.0.1 and nothing is reachable from elsewhere.
#
#   unshare -n bash tests/ray_loopback.sh PORT FOLDER COMMAND...
#
# Starts a Ray cluster with token auth (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the caller): a head
# on 127.0.0.1:PORT that runs no tasks and two worker nodes of one CPU each; and an MLflow server on 127.0.0.1:PORT+1 (runs in FOLDER/mlflow.db, artifacts in
# FOLDER/artifacts), runs COMMAND with MLFLOW_TRACKING_URI pointing there, writes what listened
# meanwhile to FOLDER/listening, then stops both by their own process groups (never `ray stop`,
# which ends every Ray on the machine).
set -uo pipefail
ray_workers=()
port=$1 folder=$2
shift 2
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_TRACKING_URI="http://127.0.0.1:$((port + 1))"
setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$port" --num-cpus=0 \
    --include-dashboard=false --temp-dir="$folder/ray" > "$folder/ray.log" 2>&1 &
ray_head=$!
setsid mlflow server --backend-store-uri "sqlite:///$folder/mlflow.db" --serve-artifacts \
    --artifacts-destination "$folder/artifacts" --host 127.0.0.1 --port $((port + 1)) --workers 1 \
    > "$folder/mlflow.log" 2>&1 &
mlflow_server=$!
stop() {
    for group in "${ray_workers[@]}" $ray_head $mlflow_server; do
        kill -TERM -- "-$group" 2>/dev/null
        for _ in $(seq 30); do kill -0 -- "-$group" 2>/dev/null || continue 2; sleep 1; done
        kill -KILL -- "-$group" 2>/dev/null
    done
}
trap stop EXIT
for _ in $(seq 120); do ray status --address "127.0.0.1:$port" > /dev/null 2>&1 && break; sleep 1; done
for worker in 1 2; do
    setsid ray start --block --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus=1 \
        > "$folder/ray-worker-$worker.log" 2>&1 &
    ray_workers+=($!)
done
for _ in $(seq 120); do python -c "import urllib.request as u; u.urlopen('$MLFLOW_TRACKING_URI/health')" 2> /dev/null && break; sleep 1; done
"$@"
status=$?
ss -ltnH | awk '{print $4}' > "$folder/listening"
exit $status
