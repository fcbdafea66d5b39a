#!/usr/bin/env bash
# Scale-out on one machine, exactly as on many: a PostgreSQL study, an MLflow tracking server
# backed by PostgreSQL, and N independent workers that join the same study and parent run.
#
#   deploy/local.sh [WORKERS=2] [TRIALS=20] [extra bench.search flags...]
#
# Needs a PostgreSQL server (PGURL, default postgresql://postgres@127.0.0.1:5432) and
# `pip install -e '.[postgres]'`. On several machines, run the mlflow server once and the
# `python -m bench.search ...` line on every machine with the same --storage/--tracking-uri.
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

pids=()
for i in $(seq "$workers"); do   # each worker is what one machine would run
  python -m bench.search --trials "$trials" --workers 1 --threads 1 --quiet \
    --storage "$pgurl/bench_optuna" --tracking-uri "http://127.0.0.1:$port" "$@" \
    >"$run_dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "started ${#pids[@]} workers: ${pids[*]} (logs: $run_dir/worker-*.log)"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 5 "$run_dir"/worker-*.log
echo "done; browse: http://127.0.0.1:$port ; study: optuna-dashboard $pgurl/bench_optuna"
exit "$status"
