#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md at full size, one after the other, then the page itself.
#   bench/run_all.sh                 # all (about 40-60 minutes on 2 cores)
#   bench/run_all.sh ingest bq_cost  # some of: ingest download cold_start bq_cost backfill ui postgres_ingest fhvhv
# Needs the project venv (.venv, pip install -e '.[dev]'), curl, PostgreSQL (apt-get install -y
# postgresql if absent) and, for bq_cost's emulator run, .ci/install-emulators.sh. Scratch data
# lives in bench/.work/ and is removed by each script; results go to bench/results/*.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-.venv/bin/python}"
benchmarks=("$@")
if [[ ${#benchmarks[@]} -eq 0 ]]; then
    benchmarks=(ingest download cold_start bq_cost backfill ui postgres_ingest fhvhv)
fi
for name in "${benchmarks[@]}"; do
    started=$(date +%s)
    echo "[run_all] ${name}" >&2
    "${python}" -m "bench.${name}"
    echo "[run_all] ${name} took $(($(date +%s) - started)) s" >&2
done
"${python}" -m bench.report
