#!/usr/bin/env bash
# Scale-out on one machine, exactly as on many: a PostgreSQL study, an MLflow tracking server
# backed by PostgreSQL, a Ray cluster, and one driver whose slots are Ray actors.
#
#   deploy/local.sh [SLOTS=2] [TRIALS=20] [extra bench.search flags...]
#
# Needs a PostgreSQL server (PGURL, default postgresql://postgres@127.0.0.1:5432) and
# `pip install -e '.[postgres,ray]'`. On several machines, run the mlflow server and the Ray head
# once, `ray start --address` on every other machine, and this script's last command once.
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${1:-2}"; trials="${2:-20}"; shift $(( $# > 2 ? 2 : $# ))
pgurl="${PGURL:-postgresql://postgres@127.0.0.1:5432}"
port="${MLFLOW_PORT:-5000}"
run_dir="${RUN_DIR:-deploy/run}"
mkdir -p "$run_dir"

for db in bench_optuna bench_mlflow; do   # idempotent: create the two databases once
  psql "$pgurl/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
    psql "$pgurl/postgres" -qc "CREATE DATABASE $db"
done

if ! curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
  mlflow server --backend-store-uri "$pgurl/bench_mlflow" \
    --artifacts-destination "$PWD/$run_dir/mlartifacts" \
    --host 127.0.0.1 --port "$port" >"$run_dir/mlflow-server.log" 2>&1 &
  echo "mlflow server pid $! on http://127.0.0.1:$port (log: $run_dir/mlflow-server.log)"
  for _ in $(seq 120); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 1; done
fi

# a Ray cluster on this machine: one head with WORKERS CPUs (on many machines: `ray start --head`
# on one, `ray start --address HEAD:6379` on the others; see deploy/README.md)
ray start --head --port "${RAY_PORT:-6379}" --num-cpus "$workers" --disable-usage-stats \
  >"$run_dir/ray.log" 2>&1
trap 'ray stop >/dev/null 2>&1 || true' EXIT
status=0
RAY_ADDRESS="127.0.0.1:${RAY_PORT:-6379}" python -m bench.search --trials "$trials" \
  --executor ray --threads 1 --storage "$pgurl/bench_optuna" \
  --tracking-uri "http://127.0.0.1:$port" "$@" || status=$?
echo "done; browse: http://127.0.0.1:$port ; study: optuna-dashboard $pgurl/bench_optuna"
exit "$status"
