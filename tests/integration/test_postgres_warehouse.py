"""PostgresWarehouse against a real PostgreSQL: URLs, passwords, sockets, schemas, one clear
error for each configuration that cannot work (the password never shown), and what the shared
typing expressions mean when PostgreSQL evaluates them."""

from __future__ import annotations

import io
import logging
import socket
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from support.e2e import Cli
from support.postgres import PostgresServer
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.postgres import client_typing
from taxi_pipeline.adapters.postgres.copying import PieceSink
from taxi_pipeline.adapters.postgres.warehouse import (
    SQL,
    VALUE_REFUSED,
    PostgresWarehouse,
    check_server_version,
    landed_columns,
)
from taxi_pipeline.adapters.sql.dialects import POSTGRES
from taxi_pipeline.adapters.sql.statements import SourceColumn
from taxi_pipeline.devkit.generator import generate_month, write_raw
from taxi_pipeline.devkit.parquet_generator import generate_parquet_month
from taxi_pipeline.domain.datasets import Column, Dataset, Month, object_name
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET, SourceFormat
from taxi_pipeline.errors import ConfigurationError, PermanentError
from taxi_pipeline.pipeline.ports import JobContext, MergePlan, ObjectInfo
from taxi_pipeline.pipeline.steps.merge import pickup_ranges

JAN = Month(2019, 1)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_the_password_from_the_url_the_setting_or_pgpassword(
    postgres_server: PostgresServer, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = postgres_server.password
    for warehouse in (
        PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True)),
        PostgresWarehouse.from_url(postgres_server.url(postgres_database), password=secret),
    ):
        assert warehouse.query("SELECT current_database()").rows == [(postgres_database,)]
        warehouse.close()
    monkeypatch.setenv("PGPASSWORD", secret)
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database))
    assert warehouse.query("SELECT 1 AS one").rows == [(1,)]
    warehouse.close()


def test_a_wrong_password_is_one_clear_error_without_the_password(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    url = postgres_server.url(postgres_database).replace("postgres@", "postgres:hunter2-secret@")
    with pytest.raises(ConfigurationError, match="refused the password") as err:
        PostgresWarehouse.from_url(url)
    assert "hunter2-secret" not in str(err.value)
    with pytest.raises(ConfigurationError, match="refused the password") as err:
        PostgresWarehouse.from_url(postgres_server.url(postgres_database), password="hunter3")
    assert "hunter3" not in str(err.value)

    cli = Cli(tmp_path / "home", "http://127.0.0.1:1", CliRunner(), {
        "TAXI_PIPELINE_WAREHOUSE_URL": url})  # fmt: skip
    for command in (["sql", "SELECT 1"], ["runs"], ["status"], ["run", "green", "2019-01"]):
        code, out = cli(*command)
        assert code != 0, out
        assert out.startswith("error: PostgreSQL at postgres@127.0.0.1:"), out
        assert "refused the password" in out
        assert "hunter2-secret" not in out
        assert "Traceback" not in out


def test_no_password_at_all_says_where_to_put_it(
    postgres_server: PostgresServer, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")
    with pytest.raises(ConfigurationError, match=r"needs a password.*PGPASSWORD"):
        PostgresWarehouse.from_url(postgres_server.url(postgres_database))


def test_an_unreachable_server_is_one_clear_error() -> None:
    port = _closed_port()
    with pytest.raises(ConfigurationError, match=rf"cannot reach PostgreSQL at u@127.0.0.1:{port}"):
        PostgresWarehouse.from_url(f"postgresql://u:pw@127.0.0.1:{port}/db?connect_timeout=3")


def test_a_missing_schema_or_database_is_one_clear_error(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    url = postgres_server.url(postgres_database, password=True)
    with pytest.raises(ConfigurationError, match=r"schema 'nope' does not exist.*CREATE SCHEMA"):
        PostgresWarehouse.from_url(url + "?schema=nope")
    with pytest.raises(ConfigurationError, match="invalid schema name"):
        PostgresWarehouse.from_url(url + "?schema=a;drop")
    with pytest.raises(ConfigurationError, match='database "no_such_db" does not exist'):
        PostgresWarehouse.from_url(postgres_server.url("no_such_db", password=True))


def test_a_server_older_than_15_is_refused() -> None:
    check_server_version(150000, "h:5432/db")
    with pytest.raises(ConfigurationError, match=r"version 14\.11; .* 15 or newer \(MERGE\)"):
        check_server_version(140011, "h:5432/db")


def test_a_unix_socket_host_and_a_schema_of_its_own(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    postgres_server.psql("CREATE SCHEMA taxi", database=postgres_database)
    warehouse = PostgresWarehouse.from_url(postgres_server.socket_url(postgres_database)
                                           + "&schema=taxi")  # fmt: skip
    warehouse.ensure_final_table(Dataset.GREEN)
    assert warehouse.table_names() == ["green_tripdata", "pipeline_loads", "pipeline_runs"]
    warehouse.close()
    in_taxi = postgres_server.psql(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables"
        " WHERE table_schema = 'taxi'",
        database=postgres_database,
    )
    assert in_taxi == "green_tripdata,pipeline_loads,pipeline_runs"


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE x (a int)",
        "SELECT 1; DROP TABLE pipeline_runs",
        "WITH gone AS (DELETE FROM pipeline_runs RETURNING 1) SELECT count(*) FROM gone",
        "SET TRANSACTION READ WRITE",
    ],
)
def test_the_users_query_cannot_change_anything(
    postgres_server: PostgresServer, postgres_database: str, statement: str
) -> None:
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    with pytest.raises(PermanentError):
        warehouse.query(statement)
    assert warehouse.table_names() == ["pipeline_loads", "pipeline_runs"]
    warehouse.close()


def test_read_only_creates_nothing_and_needs_the_history_tables(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    url = postgres_server.url(postgres_database, password=True)
    with pytest.raises(ConfigurationError, match="no taxi-pipeline tables in schema 'public'"):
        PostgresWarehouse.from_url(url, read_only=True)
    PostgresWarehouse.from_url(url).close()
    warehouse = PostgresWarehouse.from_url(url, read_only=True)
    assert warehouse.run_events() == []
    warehouse.close()


COUNT = Column("passenger_count", "integer")
AMOUNT = Column("fare_amount", "numeric")
PICKUP = Column("lpep_pickup_datetime", "timestamp")
CODE = Column("VendorID", "string", numeral=True)


@pytest.mark.parametrize(
    ("column", "text", "expected"),
    [
        (COUNT, "1", "1"),
        (COUNT, "1.0", "1"),
        (COUNT, "-3", "-3"),
        (COUNT, "1.5", None),
        (COUNT, "x", None),
        (COUNT, "1e3", "1000"),
        (COUNT, "99999999999999999999", None),  # past bigint
        (COUNT, "NaN", None),
        (AMOUNT, "2.5", "2.500000000"),
        (AMOUNT, "-0.1234567891", "-0.123456789"),
        (AMOUNT, "1e2", "100.000000000"),
        (AMOUNT, "NaN", None),
        (AMOUNT, "Infinity", None),
        (AMOUNT, "1" + "0" * 29, None),  # past DECIMAL(38, 9)
        (AMOUNT, "seven", None),
        (CODE, "2", "2"),
        (CODE, "1.0", "1.0"),
        (CODE, "2a", None),
        (PICKUP, "2019-01-31 10:00:00", "2019-01-31 10:00:00"),
        (PICKUP, "2020-02-29 10:00:00", "2020-02-29 10:00:00"),
        (PICKUP, "2019-02-29 10:00:00", None),
        (PICKUP, "2019-04-31 10:00:00", None),
        (PICKUP, "2019-01-01 25:00:00", None),
        (PICKUP, "now", None),
        (PICKUP, "Jan 1 2019", None),
        (PICKUP, "infinity", None),
        (PICKUP, "0000-01-01 00:00:00", None),
        (PICKUP, "10000-01-01 00:00:00", None),
        (PICKUP, "9999-12-31 23:59:59", None),
    ],
)
def test_typed_values_follow_the_reference_rules(
    postgres_server: PostgresServer,
    postgres_database: str,
    column: Column,
    text: str,
    expected: str | None,
) -> None:
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    literal = "'" + text.replace("'", "''") + "'"
    typed = SQL.possible_sql(column, SQL.typed_sql(column, "r.v"))
    # OFFSET 0: a column, as in the staging SQL (the planner folds a CASE branch of constants
    # even where its condition is false).
    ((value,),) = warehouse.query(
        f"SELECT CAST({typed} AS text) FROM (SELECT CAST({literal} AS text) AS v OFFSET 0) AS r"
    ).rows
    warehouse.close()
    assert value == expected


TAKEN, REFUSED = "taken", "refused"


STRICT_CASES = pytest.mark.parametrize(
    ("column", "text", "strict"),
    [
        # What the published files write: the strict casts take it.
        (COUNT, "1", TAKEN),
        (COUNT, "1.0", TAKEN),
        (COUNT, "-3", TAKEN),
        (COUNT, "", TAKEN),
        (COUNT, " 1", TAKEN),
        (AMOUNT, "2.5", TAKEN),
        (AMOUNT, "-0.1234567891", TAKEN),
        (AMOUNT, "1e2", TAKEN),
        (AMOUNT, ".5", TAKEN),
        (AMOUNT, "+.5", TAKEN),
        (AMOUNT, "5.", TAKEN),
        (AMOUNT, "00012.5", TAKEN),
        (AMOUNT, "7.25 ", TAKEN),  # PostgreSQL's numeric input skips a trailing space
        (AMOUNT, "0.0000000005", TAKEN),  # rounded to 9 decimals, away from zero
        (AMOUNT, "-2.5e-9", TAKEN),
        (AMOUNT, "1e 3", TAKEN),  # PostgreSQL reads 1000; DuckDB refuses, so the client does
        (AMOUNT, "", TAKEN),
        (CODE, "2", TAKEN),
        (CODE, "1.0", TAKEN),
        (CODE, "", TAKEN),
        (PICKUP, "2019-01-31 10:00:00", TAKEN),
        (PICKUP, "2020-02-29 10:00:00", TAKEN),
        (PICKUP, "0019-01-01 10:00:00", TAKEN),
        (PICKUP, "9999-12-30 23:59:59", TAKEN),
        (PICKUP, "", TAKEN),
        # Anything else fails the strict staging, and the month is typed the exact way.
        (COUNT, "1.5", REFUSED),
        (COUNT, "1.0000000001", REFUSED),
        (COUNT, "1e3", REFUSED),
        (COUNT, "x", REFUSED),
        (COUNT, "NaN", REFUSED),
        (COUNT, "99999999999999999999", REFUSED),
        (AMOUNT, "NaN", REFUSED),
        (AMOUNT, " NaN", REFUSED),
        (AMOUNT, "Infinity", REFUSED),
        (AMOUNT, "-Infinity", REFUSED),
        (AMOUNT, "1" + "0" * 29, REFUSED),
        (AMOUNT, "seven", REFUSED),
        (CODE, "2a", REFUSED),
        (CODE, "-1", REFUSED),
        (PICKUP, "2019-02-29 10:00:00", REFUSED),
        (PICKUP, "2019-01-01 24:00:00", REFUSED),  # the next day's midnight: another text
        (PICKUP, "2019-01-01 10:00:60", REFUSED),
        (PICKUP, "2019-01-01 10:00:+5", REFUSED),  # read as 10:00:00 by the cast
        (PICKUP, "2019-01-01T10:00:00", REFUSED),
        (PICKUP, "2019-01-01 10:00:00.5", REFUSED),
        (PICKUP, "now", REFUSED),
        (PICKUP, "Jan 1 2019", REFUSED),
        (PICKUP, "infinity", REFUSED),
        (PICKUP, "0000-01-01 00:00:00", REFUSED),
        (PICKUP, "9999-12-31 00:00:00", REFUSED),
        (PICKUP, "10000-01-01 00:00:00", REFUSED),
    ],
)


@STRICT_CASES
def test_strict_casts_give_the_exact_value_or_refuse(
    postgres_server: PostgresServer,
    postgres_database: str,
    column: Column,
    text: str,
    strict: str,
) -> None:
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    literal = "'" + text.replace("'", "''") + "'"
    exact = SQL.possible_sql(column, SQL.typed_sql(column, "r.v"))

    def value(expression: str) -> object:
        ((typed,),) = warehouse.query(
            f"SELECT CAST({expression} AS text)"
            f" FROM (SELECT CAST({literal} AS text) AS v OFFSET 0) AS r"
        ).rows
        return typed

    try:
        if strict == TAKEN:
            assert value(SQL.strict_typed_sql(column, "r.v")) == value(exact)
        else:
            with pytest.raises(PermanentError):
                value(SQL.strict_typed_sql(column, "r.v"))
    finally:
        warehouse.close()


@STRICT_CASES
def test_the_client_typing_gives_the_exact_value_or_refuses(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    column: Column,
    text: str,
    strict: str,
) -> None:
    """Each value in one green line typed by this client on its way into COPY: the exact
    typing's value, or a refusal (by the client, or by the server's input in COPY), which sends
    the month to the landing; never a value the strict typing refuses."""
    import psycopg

    layout = Dataset.GREEN.layout
    fields = GOOD.split(",")
    fields[layout.names.index(column.name)] = text
    path = write_raw(tmp_path / "f.csv.gz", layout.header, [",".join(fields)])
    sink = io.BytesIO()
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    exact = SQL.possible_sql(column, SQL.typed_sql(column, "r.v"))
    literal = "'" + text.replace("'", "''") + "'"
    try:
        ((expected,),) = warehouse.query(
            f"SELECT CAST({exact} AS text) FROM (SELECT CAST({literal} AS text) AS v OFFSET 0) AS r"
        ).rows
        try:
            client_typing.write_typed_rows(_green_csv(path), sink)
        except client_typing.ClientTypingRefused:
            return
        with psycopg.connect(postgres_server.url(postgres_database, password=True)) as conn:
            for statement in client_typing.staging_table_sql(Dataset.GREEN, "typed", "f"):
                conn.execute(statement)
            refused: str | None = None
            try:
                with conn.cursor().copy(_green_copy("typed")) as copy:
                    copy.write(sink.getvalue())
            except psycopg.DataError as exc:
                refused = exc.sqlstate
            if refused is not None:
                assert refused in VALUE_REFUSED
                return
            row = conn.execute(f'SELECT CAST("{column.name}" AS text) FROM typed').fetchone()
        assert strict == TAKEN
        assert row == (expected,)
    finally:
        warehouse.close()


def test_the_client_counts_what_the_server_would_measure(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """Rows without a pickup (dated by their dropoff), without either, out of the month and
    years away: the tally of the batches on their way into COPY is the SQL measure's."""
    import psycopg

    def line(pickup: str, dropoff: str) -> str:
        fields = GOOD.split(",")
        fields[1:3] = [pickup, dropoff]
        return ",".join(fields)

    lines = [
        GOOD,
        line("", "2019-01-07 10:00:00"),
        line("2019-01-08 10:00:00", ""),
        line("", ""),
        line("2019-02-01 00:00:00", "2019-02-01 00:10:00"),
        line("2008-12-31 23:59:59", "2009-01-01 00:10:00"),
    ]
    path = write_raw(tmp_path / "f.csv.gz", Dataset.GREEN.layout.header, lines)
    PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True)).close()
    tally = client_typing.Tally(Dataset.GREEN, JAN)
    with psycopg.connect(postgres_server.url(postgres_database, password=True)) as conn:
        for statement in client_typing.staging_table_sql(Dataset.GREEN, "typed", "f"):
            conn.execute(statement)
        with conn.cursor().copy(_green_copy("typed")) as copy:
            sink = PieceSink(copy.write, whole_records=False)
            client_typing.write_typed_rows(_green_csv(path), sink, tally)
            sink.finish()
        measured = conn.execute(SQL.strict_measure_sql(Dataset.GREEN, JAN, "typed")).fetchone()
    summary = SQL.summary(tally.measure_row())
    assert summary == SQL.summary(measured or ())
    assert (summary.rows, summary.rows_out_of_month) == (6, 2)
    assert (summary.rows_without_pickup, summary.rows_without_dropoff) == (2, 2)
    assert summary.pickup_dates[0].isoformat() == "2008-12-31"


def test_the_strict_staging_runs_on_parallel_workers(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    """Every function it calls is PARALLEL SAFE (a try-cast with an exception block would
    keep the whole statement in one process)."""
    import psycopg

    PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True)).close()
    layout = Dataset.GREEN.layout
    with psycopg.connect(postgres_server.url(postgres_database, password=True)) as conn:
        columns = ", ".join(f'"{c.name}" text' for c in layout.columns)
        conn.execute(f"CREATE TABLE landing ({columns})")
        # Large enough for workers (min_parallel_table_scan_size, 8 MB by default).
        values = ", ".join("'2019-01-05 10:00:00'" if "datetime" in c.name else "'1'"
                           for c in layout.columns)  # fmt: skip
        conn.execute(f"INSERT INTO landing SELECT {values} FROM generate_series(1, 200000)")
        conn.execute("ANALYZE landing")
        conn.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0")
        plan = conn.execute(
            "EXPLAIN " + SQL.strict_staging_sql(Dataset.GREEN, JAN, "staged", "landing", "f.csv")
        ).fetchall()
    assert any("Workers Planned" in line for (line,) in plan), plan


@pytest.mark.parametrize(
    ("dataset", "month", "fmt"),
    [
        (Dataset.GREEN, JAN, CSV_GZ),
        (Dataset.YELLOW, JAN, CSV_GZ),
        (Dataset("fhv"), Month(2019, 2), CSV_GZ),
        (Dataset.YELLOW, Month(2023, 1), PARQUET),
        (Dataset.GREEN, Month(2024, 3), PARQUET),
        (Dataset("fhvhv"), Month(2025, 2), PARQUET),
        # Schema periods: the first, a column typed null, a fee added, ehail_fee null.
        (Dataset.YELLOW, Month(2011, 1), PARQUET),
        (Dataset.YELLOW, Month(2020, 10), PARQUET),
        (Dataset.YELLOW, Month(2025, 2), PARQUET),
        (Dataset.GREEN, Month(2013, 8), PARQUET),
        (Dataset.GREEN, Month(2019, 10), PARQUET),
        (Dataset("fhv"), Month(2016, 1), PARQUET),
    ],
    ids=lambda v: getattr(v, "value", None) or getattr(v, "name", None) or str(v),
)
def test_the_strict_and_the_exact_staging_write_the_same_rows(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    dataset: Dataset,
    month: Month,
    fmt: SourceFormat,
) -> None:
    """A generated month (``1.0`` spellings, empty fields, duplicates, strays; a Parquet one
    written into COPY by its format's CSV feed, as the adapter does) typed both ways from one
    landing table, and by this client from the file: the same rows, ids and all."""
    import psycopg

    if fmt is CSV_GZ:
        path, rows = (g := generate_month(tmp_path, dataset, month, 20_000, seed=3)).path, g.rows
    else:
        parquet = generate_parquet_month(tmp_path, dataset.value, month, 20_000, seed=3)
        path, rows = parquet.path, parquet.rows
    PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True)).close()
    in_file = landed_columns(dataset, month, fmt)
    names = [c.name for c, _ in in_file]
    sources = {c.name: SourceColumn(c.name if c.name in names else None)
               for c in dataset.layout.final_columns}  # fmt: skip
    final = ", ".join(
        ["unique_row_id", "filename", *(f'"{n}"' for n in dataset.layout.final_names)]
    )
    with psycopg.connect(postgres_server.url(postgres_database, password=True)) as conn:
        conn.execute("SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'")
        conn.execute("CREATE TABLE landing (" + ", ".join(f'"{n}" text' for n in names) + ")")
        statement = f"COPY landing FROM STDIN {POSTGRES.copy_options(fmt)}"
        with path.open("rb") as handle, conn.cursor().copy(statement) as copy:
            sink = PieceSink(copy.write)
            fmt.write_csv(handle, [(c.name, n) for c, n in in_file], sink)
            sink.finish()
        for sql in (
            SQL.strict_staging_sql(dataset, month, "strict", "landing", "f", sources),
            SQL.staging_sql(dataset, month, "exact", "landing", "f", sources),
        ):
            conn.execute(sql)
        typings = ["strict"]
        if client_typing.supports(dataset):  # as this client types a file of the lake
            typings.append("client")
            for statement in client_typing.staging_table_sql(dataset, "client", "f"):
                conn.execute(statement)
            tally = client_typing.Tally(dataset, month)
            client_file = client_typing.TypedFile(
                path, fmt, dataset, month, [(c.name, n) for c, n in in_file]
            )
            copy_sql = client_typing.copy_sql(dataset, "client", client_file.in_file)
            with conn.cursor().copy(copy_sql) as copy:
                sink = PieceSink(copy.write)
                client_typing.write_typed_rows(client_file, sink, tally)
                sink.finish()
            # Counted on the way, as the server measures the table (strays, days, NULLs).
            measured = conn.execute(SQL.strict_measure_sql(dataset, month, "client")).fetchone()
            assert SQL.summary(tally.measure_row()) == SQL.summary(measured or ())
        (bad,) = conn.execute("SELECT count(*) FROM exact WHERE _bad OR _header").fetchone() or ()
        for typed in typings:
            differ = conn.execute(
                f"SELECT count(*) FROM ((SELECT {final} FROM {typed} EXCEPT ALL SELECT {final}"
                f" FROM exact) UNION ALL (SELECT {final} FROM exact EXCEPT ALL SELECT {final}"
                f" FROM {typed})) AS d"
            ).fetchone()
            (typed_rows,) = conn.execute(f"SELECT count(*) FROM {typed}").fetchone() or ()
            assert (bad, differ, typed_rows) == (0, (0,), rows), typed


def _green_csv(path: Path) -> client_typing.TypedFile:
    """A green 2019-01 gzip CSV at ``path`` for this client to type."""
    columns = [(c.name, c.name) for c in Dataset.GREEN.layout.columns]
    return client_typing.TypedFile(path, CSV_GZ, Dataset.GREEN, JAN, columns)


def _green_copy(table: str) -> str:
    return client_typing.copy_sql(Dataset.GREEN, table, Dataset.GREEN.layout.names)


GOOD = "2,2019-01-05 10:00:00,2019-01-05 10:10:00,N,1,74,75,1,1.2,7,0,0.5,0,0,,0.3,7.8,2,1,"
PLUS_ONE = GOOD.replace(",1,1.2,", ",+1,1.2,", 1)
"""A count the strict typing takes and this client does not: the month lands as text."""


def _green_january(tmp_path: Path, lines: list[str]) -> tuple[FolderStore, ObjectInfo]:
    """A folder lake holding a green 2019-01 file of ``lines`` (under the published header)."""
    lake = FolderStore(tmp_path / "lake")
    name = object_name(Dataset.GREEN, JAN)
    with lake.writer(name, {}) as out:
        out.write(write_raw(tmp_path / "f.csv.gz", Dataset.GREEN.layout.header, lines).read_bytes())
    source = lake.stat(name)
    assert source is not None
    return lake, source


@pytest.mark.parametrize(
    ("lines", "bad"),
    [
        # Each file holds a value the strict staging refuses: the exact typing counts it.
        ([GOOD, GOOD.replace(",1,1.2,", ",1.5,1.2,", 1), GOOD.replace(",7,0,", ",NaN,0,", 1)], 2),
        ([GOOD, GOOD.replace(",7,0,", ",Infinity,0,", 1), GOOD.replace("2,", "1.0,", 1)], 1),
        ([GOOD, GOOD.replace("2019-01-05 10:00:00", "now", 1)], 1),
        # A value of the files' shape that is no time: the cast itself refuses it.
        ([GOOD, GOOD.replace("2019-01-05 10:00:00", "2019-02-30 10:00:00", 1)], 1),
        ([GOOD, GOOD.replace(",7,0,", ",seven,0,", 1), GOOD.replace(",7,0,", ',"",0,', 1)], 1),
        ([GOOD, GOOD.replace(",74,75,", ",74a,75,", 1)], 1),
        # None: the strict staging's table becomes the file's partition.
        ([GOOD, GOOD.replace("2,", "1.0,", 1), GOOD.replace(",7,0,", ",,0,", 1)], 0),
    ],
)
def test_a_file_the_strict_staging_refuses_is_typed_the_exact_way(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path, lines: list[str],
    bad: int,
) -> None:  # fmt: skip
    lake, source = _green_january(tmp_path, lines)
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    warehouse.ensure_final_table(Dataset.GREEN)
    context = JobContext("green-201901-landed", Dataset.GREEN, JAN, "merge")
    staged = warehouse.stage(source, lake, context)
    assert (staged.rows, staged.rows_bad) == (len(lines), bad)
    assert len(staged.bad_samples) == bad
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, True)).inserted == len(lines)
    warehouse.drop_month_objects(Dataset.GREEN, JAN)
    assert warehouse.table_names() == ["green_tripdata", "pipeline_loads", "pipeline_runs"]
    warehouse.close()


@pytest.mark.parametrize(
    ("lines", "as_text", "remote"),
    [
        ([GOOD, GOOD.replace("2,", "1.0,", 1)], False, False),
        # A text quoted in the CSV (a comma in it): binary COPY carries any text as it is.
        ([GOOD, GOOD.replace(",N,", ',"N,Y",', 1)], False, False),
        ([GOOD, PLUS_ONE], True, False),
        # Nothing this client could open: the stream lands as text (no refusal to log).
        ([GOOD, GOOD.replace("2,", "1.0,", 1)], False, True),
    ],
)
def test_a_clean_csv_month_is_typed_in_the_client_and_any_other_lands_as_text(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    as_text: bool,
    remote: bool,
) -> None:
    lake, source = _green_january(tmp_path, lines)
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    try:
        warehouse.ensure_final_table(Dataset.GREEN)
        context = JobContext("green-201901-client", Dataset.GREEN, JAN, "merge")
        typed: list[Path] = []
        real = client_typing.write_typed_rows

        def spy(file: client_typing.TypedFile, *args: Any) -> None:
            typed.append(file.path)
            real(file, *args)

        monkeypatch.setattr(client_typing, "write_typed_rows", spy)
        with caplog.at_level(logging.INFO, logger="taxi_pipeline.adapters.postgres.warehouse"):
            # A remote object (as a GCS bucket's) is no file here: streamed, never opened.
            if remote:
                source = replace(source, uri=f"gs://lake/{source.name}")
            staged = warehouse.stage(source, lake, context)
        assert ("landing it as text" in caplog.text) == as_text
        assert len(typed) == (0 if remote else 1)
        assert (staged.rows, staged.rows_bad) == (len(lines), 0)
        plan = MergePlan(context, pickup_ranges(staged.pickup_dates), True)
        assert warehouse.merge_staged(plan).inserted == len(lines)
        flags = warehouse.query(
            "SELECT store_and_fwd_flag, count(*) FROM green_tripdata GROUP BY 1 ORDER BY 1"
        ).rows
        assert flags == ([("N", 1), ("N,Y", 1)] if "N,Y" in lines[1] else [("N", 2)])
    finally:
        warehouse.close()


def test_a_parquet_month_is_typed_in_the_client_or_lands_as_text_alike(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TLC Parquet month in a folder lake goes through this client's typing into one binary
    COPY; where the client refuses it (a value it cannot vouch for), the month lands as text.
    Both ways (a schema each) the final table holds the same rows, values and ids."""
    month = Month(2023, 1)
    parquet = generate_parquet_month(tmp_path / "src", "yellow", month, 5_000, seed=5)
    lake = FolderStore(tmp_path / "lake")
    name = object_name(Dataset.YELLOW, month, PARQUET)
    with lake.writer(name, {}) as out:
        out.write(parquet.path.read_bytes())
    source = lake.stat(name)
    assert source is not None
    real = client_typing.write_typed_rows
    refused = False

    def spy(file: client_typing.TypedFile, *args: Any) -> None:
        assert file.fmt is PARQUET
        if refused:
            raise client_typing.ClientTypingRefused("taxi_pipeline: refused fare_amount: x")
        real(file, *args)

    monkeypatch.setattr(client_typing, "write_typed_rows", spy)
    postgres_server.psql("CREATE SCHEMA client; CREATE SCHEMA text", postgres_database)
    columns = ", ".join(f'"{n}"' for n in Dataset.YELLOW.layout.final_names)
    tables: dict[bool, Counter[tuple[Any, ...]]] = {}
    for refused in (False, True):
        url = postgres_server.url(postgres_database, password=True)
        warehouse = PostgresWarehouse.from_url(f"{url}?schema={'text' if refused else 'client'}")
        try:
            warehouse.ensure_final_table(Dataset.YELLOW)
            context = JobContext("yellow-202301-client", Dataset.YELLOW, month, "merge")
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="taxi_pipeline.adapters.postgres.warehouse"):
                staged = warehouse.stage(source, lake, context)
            assert ("landing it as text" in caplog.text) == refused
            assert (staged.rows, staged.rows_bad) == (parquet.spec.rows, 0)
            assert staged.rows_out_of_month == parquet.out_of_month_rows
            plan = MergePlan(context, pickup_ranges(staged.pickup_dates), True)
            assert warehouse.merge_staged(plan).inserted == parquet.spec.rows
            rows = warehouse.query(
                f"SELECT encode(unique_row_id, 'hex'), filename, {columns} FROM yellow_tripdata"
            ).rows
            tables[refused] = Counter(rows)  # a row repeated in the file is kept, twice
            assert len(rows) == parquet.spec.rows
        finally:
            warehouse.close()
    assert tables[False] == tables[True]


def test_a_copy_failing_on_any_connection_stages_nothing(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """The month lands through two COPY connections in turn, a piece (a MiB) each: a short line
    in the second piece fails that COPY, and the other ends with it."""
    lines = [GOOD] * 40_000
    lines[20_000] = GOOD.rsplit(",", 3)[0]  # too few fields, 1.5 MB in: the second piece
    lake, source = _green_january(tmp_path, lines)
    warehouse = PostgresWarehouse.from_url(postgres_server.url(postgres_database, password=True))
    warehouse.ensure_final_table(Dataset.GREEN)
    context = JobContext("green-201901-short", Dataset.GREEN, JAN, "merge")
    with pytest.raises(PermanentError, match="missing data for column"):
        warehouse.stage(source, lake, context)
    warehouse.drop_month_objects(Dataset.GREEN, JAN)
    assert warehouse.table_names() == ["green_tripdata", "pipeline_loads", "pipeline_runs"]
    warehouse.close()


def test_a_month_lands_through_one_connection_where_the_server_gives_no_second(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A role allowed two connections (the warehouse's idle one, the staging one): the COPY
    helper is refused, and the month lands through the one it has."""
    role = f"{postgres_database}_limited"
    postgres_server.psql(
        f"CREATE ROLE {role} LOGIN PASSWORD 'limited-secret' CONNECTION LIMIT 2;"
        f" GRANT ALL ON DATABASE {postgres_database} TO {role}",
    )
    postgres_server.psql(f"GRANT ALL ON SCHEMA public TO {role}", postgres_database)
    url = postgres_server.url(postgres_database).replace("postgres@", f"{role}:limited-secret@")
    lake, source = _green_january(tmp_path, [PLUS_ONE])
    warehouse = PostgresWarehouse.from_url(url)
    try:
        warehouse.ensure_final_table(Dataset.GREEN)
        context = JobContext("green-201901-limited", Dataset.GREEN, JAN, "merge")
        with caplog.at_level(logging.INFO, logger="taxi_pipeline.adapters.postgres.warehouse"):
            staged = warehouse.stage(source, lake, context)
        assert staged.rows == 1
        assert "landing through 1 connection(s)" in caplog.text
        plan = MergePlan(context, pickup_ranges(staged.pickup_dates), True)
        assert warehouse.merge_staged(plan).inserted == 1
        assert warehouse.query("SELECT count(*) FROM green_tripdata").rows == [(1,)]
    finally:
        warehouse.close()
        postgres_server.psql(f"DROP OWNED BY {role}; DROP ROLE {role}", postgres_database)
