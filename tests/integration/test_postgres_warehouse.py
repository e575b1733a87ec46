"""PostgresWarehouse against a real PostgreSQL: URLs, passwords, sockets, schemas, and one clear
error for each configuration that cannot work, with the password never shown."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.e2e import Cli
from support.postgres import PostgresServer
from taxi_pipeline.adapters.postgres.warehouse import PostgresWarehouse, check_server_version
from taxi_pipeline.datasets import Dataset
from taxi_pipeline.errors import ConfigurationError, PermanentError


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
