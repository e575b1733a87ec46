"""PostgresWarehouse against a real PostgreSQL: URLs, passwords, sockets, schemas, one clear
error for each configuration that cannot work (the password never shown), and what the shared
typing expressions mean when PostgreSQL evaluates them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.e2e import Cli
from support.postgres import PostgresServer
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.postgres.warehouse import SQL, PostgresWarehouse, check_server_version
from taxi_pipeline.devkit.generator import write_raw
from taxi_pipeline.domain.datasets import Column, Dataset, Month, object_name
from taxi_pipeline.errors import ConfigurationError, PermanentError
from taxi_pipeline.pipeline.ports import JobContext, MergePlan
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


GOOD = "2,2019-01-05 10:00:00,2019-01-05 10:10:00,N,1,74,75,1,1.2,7,0,0.5,0,0,,0.3,7.8,2,1,"


@pytest.mark.parametrize(
    ("lines", "bad"),
    [
        # Every value parses as COPY lands it (numbers typed): the ranges decide.
        ([GOOD, GOOD.replace(",1,1.2,", ",1.5,1.2,", 1), GOOD.replace(",7,0,", ",NaN,0,", 1)], 2),
        ([GOOD, GOOD.replace(",7,0,", ",Infinity,0,", 1), GOOD.replace("2,", "1.0,", 1)], 1),
        ([GOOD, GOOD.replace("2019-01-05 10:00:00", "now", 1)], 1),
        # A value of the files' shape that is no time: the file lands again as text.
        ([GOOD, GOOD.replace("2019-01-05 10:00:00", "2019-02-30 10:00:00", 1)], 1),
        # A number COPY refuses: the same.
        ([GOOD, GOOD.replace(",7,0,", ",seven,0,", 1), GOOD.replace(",7,0,", ',"",0,', 1)], 1),
    ],
)
def test_a_file_lands_typed_and_falls_back_to_text_with_the_same_outcome(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path, lines: list[str],
    bad: int,
) -> None:  # fmt: skip
    lake = FolderStore(tmp_path / "lake")
    name = object_name(Dataset.GREEN, JAN)
    with lake.writer(name, {}) as out:
        out.write(write_raw(tmp_path / "f.csv.gz", Dataset.GREEN.layout.header, lines).read_bytes())
    source = lake.stat(name)
    assert source is not None
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
