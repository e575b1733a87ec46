"""The zoomcamp's ingestion style: pandas ``read_csv(chunksize=100000)`` -> PostgreSQL ``to_sql``.

Runs in the peer venv (``bench/.work/venv``: pandas, SQLAlchemy, psycopg2-binary), not the
project's. ``python bench/peer_pandas.py FILE.csv.gz postgresql+psycopg2://... [MAX_ROWS]``
prints the rows inserted and the seconds taken as JSON. As in the course's ``ingest_data.py``:
the first chunk creates the table (``head(0).to_sql(if_exists="replace")``), every chunk converts
the two timestamps with ``pd.to_datetime`` and is appended with ``to_sql``. With ``MAX_ROWS`` it
stops after that many rows (whole chunks): the full month takes the better part of an hour.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]
from sqlalchemy import create_engine  # type: ignore[import-not-found, unused-ignore]

_TABLE = "yellow_taxi_data"


def main(argv: list[str]) -> int:
    source, url = argv[0], argv[1]
    max_rows = int(argv[2]) if len(argv) > 2 else None
    started = time.perf_counter()
    engine = create_engine(url)
    rows = 0
    chunks = pd.read_csv(source, iterator=True, chunksize=100_000, low_memory=False)
    for i, df in enumerate(chunks):
        df.tpep_pickup_datetime = pd.to_datetime(df.tpep_pickup_datetime)
        df.tpep_dropoff_datetime = pd.to_datetime(df.tpep_dropoff_datetime)
        if i == 0:
            df.head(n=0).to_sql(name=_TABLE, con=engine, if_exists="replace")
        df.to_sql(name=_TABLE, con=engine, if_exists="append")
        rows += len(df)
        if max_rows is not None and rows >= max_rows:
            break
    engine.dispose()
    seconds = time.perf_counter() - started
    sys.stdout.write(json.dumps({"rows": rows, "seconds": seconds}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
