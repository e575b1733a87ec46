"""Benchmark 5: BigQuery bytes scanned by the monthly merge, with and without partition pruning.

``python -m bench.bq_cost``:

1. builds the MERGE with the BigQuery adapter's own builder
   (``adapters.sql.statements.Statements.merge_sql``)
   for the pickup dates of a generated month (``steps.merge.pickup_ranges``), so the page shows
   the constant pickup ranges in its ON clause;
2. runs that MERGE on the BigQuery emulator (local-bigquery): a dry run (the emulator reports
   0 bytes for every dry run, so it proves only that the statement is accepted) and a real run
   over a few staged rows (rows inserted);
3. computes bytes scanned from partition sizes: BigQuery bills the columns a query reads, in the
   partitions it reads (logical sizes: BYTES 2 + length, STRING 2 + length, TIMESTAMP / INT64 8,
   NUMERIC 16, NULL 0). The pruned MERGE reads ``unique_row_id`` and the pickup column of the
   target's partitions in the staging date ranges; the reference MERGE (no pruning) reads
   ``unique_row_id`` of every partition. Both read the whole staging table. Per-day sizes come
   from the generated month (DuckDB over the file); a target of N months is N such months.

Results go to ``bench/results/bq_cost.json``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from bench.common import FULL_MONTH_ROWS, REPO, generate, say, scratch, write_results
from taxi_pipeline.adapters.bigquery.warehouse import SQL
from taxi_pipeline.domain.datasets import Dataset, Month, csv_name
from taxi_pipeline.pipeline.steps.merge import pickup_ranges

_ID_BYTES = 2 + 16
_TIMESTAMP_BYTES = 8
_SIZES = {"timestamp": 8, "integer": 8, "numeric": 16}
TARGET_MONTHS = (1, 12, 31)
_PROJECT = "test-project"
_DATASET = "bench"


def _per_day(source: Path) -> list[tuple[date | None, int, int]]:
    """(pickup date, rows, staging bytes of those rows) from the generated file."""
    dataset = Dataset.YELLOW
    layout = dataset.layout
    filename_bytes = 2 + len(csv_name(dataset, Month(2019, 1)))
    terms = [str(_ID_BYTES + filename_bytes)]
    for c in layout.columns:
        ref = f'"{c.name}"'
        size = f"2 + strlen({ref})" if c.kind == "string" else str(_SIZES[c.kind])
        terms.append(f"CASE WHEN {ref} IS NULL THEN 0 ELSE {size} END")
    columns = ", ".join(f"'{c.name}': 'VARCHAR'" for c in layout.columns)
    con = duckdb.connect()
    try:
        rows = con.execute(
            f'SELECT CAST(CAST("{layout.pickup}" AS TIMESTAMP) AS DATE) AS day, count(*),'
            f" sum({' + '.join(terms)})"
            f" FROM read_csv('{source}', header = true, auto_detect = false, nullstr = '',"
            f" columns = {{{columns}}}) GROUP BY day ORDER BY day NULLS FIRST"
        ).fetchall()
    finally:
        con.close()
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def _covered(day: date, first: Month, last: Month) -> bool:
    return first <= Month(day.year, day.month) <= last


def _table(days: list[tuple[date | None, int, int]]) -> dict[str, Any]:
    """Bytes the MERGE of this month reads, for targets already holding N months.

    Every month in the target is modelled as the generated one (same rows; an average day holds
    1/31 of them). "First load": the target holds the N months before 2019-01. "Re-load": it
    holds 2019-01 and the N-1 months before (a re-run, or overlapping backfills).
    """
    loaded = Month(2019, 1)
    rows_total = sum(n for _, n, _ in days)
    month_rows = sum(n for d, n, _ in days if d is not None and Month(d.year, d.month) == loaded)
    staging_bytes = sum(b for _, _, b in days)
    day_rows = rows_total / 31
    other_days = sorted({d for d, _, _ in days if d is not None} - _month_days(loaded))
    pruned_row = _ID_BYTES + _TIMESTAMP_BYTES
    table = []
    for months in TARGET_MONTHS:
        first_span = (loaded.minus(months), loaded.minus(1))
        reload_span = (loaded.minus(months - 1), loaded)
        first_days = sum(1 for d in other_days if _covered(d, *first_span))
        reload_days = sum(1 for d in other_days if _covered(d, *reload_span))
        table.append(
            {
                "target_months": months,
                "target_rows": months * rows_total,
                "unpruned": months * rows_total * _ID_BYTES,
                "pruned_first_load": round(first_days * day_rows * pruned_row),
                "pruned_reload": round((month_rows + reload_days * day_rows) * pruned_row),
                "staging": staging_bytes,
            }
        )
    return {
        "rows": rows_total,
        "rows_out_of_month": rows_total - month_rows,
        "pickup_days": len(days),
        "out_of_month_days": [d.isoformat() for d in other_days],
        "staging_bytes": staging_bytes,
        "bytes_per_row_target_unpruned": _ID_BYTES,
        "bytes_per_row_target_pruned": pruned_row,
        "table": table,
    }


def _month_days(month: Month) -> set[date]:
    following = month.next()
    start, end = date(month.year, month.month, 1), date(following.year, following.month, 1)
    return {date.fromordinal(o) for o in range(start.toordinal(), end.toordinal())}


def _emulator_run(work: Path, sql_for: dict[str, str]) -> dict[str, Any]:
    """Dry run and a real run of the generated MERGE on local-bigquery."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from emulators import EmulatorNotInstalledError, start_bigquery_emulator
    except ImportError as exc:  # pragma: no cover - the tests folder is part of the repo
        return {"skipped": str(exc)}
    from google.cloud import bigquery

    try:
        emulator = start_bigquery_emulator(work / "bq", gcs=None, project=_PROJECT)
    except EmulatorNotInstalledError as exc:
        return {"skipped": f"local-bigquery not installed: {exc}"}
    try:
        client = emulator.client()
        client.create_dataset(f"{_PROJECT}.{_DATASET}")
        final = f"`{_PROJECT}.{_DATASET}.yellow_tripdata`"
        staging = f"`{_PROJECT}.{_DATASET}.yellow_tripdata_2019_01`"
        client.query(SQL.final_table_sql(Dataset.YELLOW, final)).result()
        client.query(f"CREATE TABLE {staging} AS SELECT * FROM {final} WHERE FALSE").result()
        client.query(
            f"INSERT INTO {staging} (unique_row_id, filename, tpep_pickup_datetime)"
            " VALUES (MD5('a'), 'f', TIMESTAMP '2019-01-05 10:00:00'),"
            " (MD5('b'), 'f', TIMESTAMP '2019-01-31 23:59:59'),"
            " (MD5('c'), 'f', TIMESTAMP '2008-12-31 10:00:00')"
        ).result()
        sql = sql_for["emulator"].replace("{final}", final).replace("{staging}", staging)
        dry = client.query(
            sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        )
        first = client.query(sql)
        first.result()
        again = client.query(sql)
        again.result()
        return {
            "local_bigquery": "0.3.2",
            "dry_run_total_bytes_processed": dry.total_bytes_processed,
            "rows_inserted_first_merge": first.num_dml_affected_rows,
            "rows_inserted_second_merge": again.num_dml_affected_rows,
        }
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=FULL_MONTH_ROWS)
    parser.add_argument("--no-emulator", action="store_true")
    parser.add_argument("--name", default="bq_cost")
    args = parser.parse_args(argv)
    with scratch("bq-cost") as work:
        say(f"generating a yellow month of {args.rows:,} rows")
        source = generate(work / "source", args.rows)
        days = _per_day(source)
        dates = [d for d, _, _ in days if d is not None]
        ranges = pickup_ranges(dates)
        has_null = any(d is None for d, _, _ in days)
        generated = SQL.merge_sql(Dataset.YELLOW, "{final}", "{staging}", ranges, has_null)
        emulator: dict[str, Any] = {"skipped": "--no-emulator"}
        if not args.no_emulator:
            say("running the generated MERGE on local-bigquery")
            emulator = _emulator_run(work, {"emulator": generated})
    payload = {
        "month_rows": args.rows,
        "pickup_ranges": [[r.start.isoformat(), r.end.isoformat()] for r in ranges],
        "merge_sql": generated,
        "emulator": emulator,
        "bytes": _table(days),
        "minimum_billed_per_table_bytes": 10 * 1024 * 1024,
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
