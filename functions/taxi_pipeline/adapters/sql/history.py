"""The run history tables of every SQL store, written once: ``pipeline_runs`` (appended
:class:`RunEvent` lines) and ``pipeline_loads`` (completed loads), their DDL, the statements that
write and read them, and the mapping between rows and values. Every warehouse's dialect has the
few hooks they need (:class:`HistoryDialect`); so has the embedded default's SQLite history."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from taxi_pipeline.adapters.sql.dialects import HistoryKind
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import LoadRecord, RunEvent

RUNS_TABLE: Final = "pipeline_runs"
LOADS_TABLE: Final = "pipeline_loads"

Value = str | int | datetime | None


@dataclass(frozen=True)
class HistoryColumn:
    name: str
    kind: HistoryKind
    required: bool = False


@dataclass(frozen=True)
class Param:
    """A query parameter: each adapter passes it in its driver's form."""

    name: str
    kind: HistoryKind
    value: Value


def _columns(spec: str) -> tuple[HistoryColumn, ...]:
    """``name:kind[!]`` items (``!``: NOT NULL); kinds t(ext), i(nteger), ts (timestamp)."""
    kinds: dict[str, HistoryKind] = {"t": "text", "i": "integer", "ts": "timestamp"}
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append(HistoryColumn(name, kinds[kind.rstrip("!")], kind.endswith("!")))
    return tuple(out)


RUN_COLUMNS: Final = _columns(
    "run_id:t! dataset:t month:t step:t! state:t! attempt:i started_at:ts finished_at:ts"
    " rows:i bytes:i labels:t error:t details:t recorded_at:ts!"
)
PROCESS_COLUMN: Final = HistoryColumn("process", "text")
SEQ_COLUMN: Final = HistoryColumn("seq", "integer")
LOAD_COLUMNS: Final = _columns(
    "dataset:t! month:t! object_name:t! generation:t! run_id:t! rows_in_file:i!"
    " rows_inserted:i! loaded_at:ts!"
)


class HistoryDialect(Protocol):
    """What the history statements need of a dialect (``dialects.Dialect`` has it all)."""

    @property
    def history_types(self) -> Mapping[HistoryKind, str]: ...

    @property
    def insertion_order(self) -> str:
        """What orders history rows recorded at the same instant (a column, the row id)."""

    @property
    def loads_order(self) -> str:
        """The order of ``pipeline_loads`` rows."""

    @property
    def history_sequence(self) -> bool:
        """Whether ``pipeline_runs`` has a ``seq`` column the writer fills."""

    @property
    def server_sequence(self) -> str | None: ...

    @property
    def history_process(self) -> bool:
        """Whether ``pipeline_runs`` keeps the ``process`` that wrote each line."""

    def quote_ident(self, name: str) -> str: ...

    def param(self, name: str) -> str: ...

    def to_timestamp(self, value: datetime | None) -> Value:
        """A timestamp as the driver takes it."""

    def from_timestamp(self, value: Any) -> datetime | None:
        """A timestamp the driver returned, as aware UTC."""

    def history_suffix(self, table: str) -> str: ...


class History:
    """The history statements in one dialect, over the two tables' references."""

    def __init__(self, dialect: HistoryDialect, runs_ref: str, loads_ref: str) -> None:
        self.dialect = dialect
        self.runs_ref = runs_ref
        self.loads_ref = loads_ref

    @property
    def event_columns(self) -> tuple[HistoryColumn, ...]:
        """The columns a :class:`RunEvent` is read from."""
        return RUN_COLUMNS + ((PROCESS_COLUMN,) if self.dialect.history_process else ())

    @property
    def run_columns(self) -> tuple[HistoryColumn, ...]:
        """Every column of ``pipeline_runs`` the writer fills."""
        return self.event_columns + ((SEQ_COLUMN,) if self.dialect.history_sequence else ())

    def ddl(self) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` of both tables."""
        return [
            self._create(RUNS_TABLE, self.runs_ref, self.run_columns),
            self._create(LOADS_TABLE, self.loads_ref, LOAD_COLUMNS),
        ]

    def _create(self, table: str, ref: str, columns: Sequence[HistoryColumn]) -> str:
        d = self.dialect
        listed = ",\n  ".join(
            f"{d.quote_ident(c.name)} {d.history_types[c.kind]}"
            + (" NOT NULL" if c.required else "")
            for c in columns
        )
        if table == RUNS_TABLE and d.server_sequence:
            listed = f"seq {d.server_sequence},\n  {listed}"
        return f"CREATE TABLE IF NOT EXISTS {ref} (\n  {listed}\n){d.history_suffix(table)}"

    def insert(
        self, ref: str, columns: Sequence[HistoryColumn], rows: Sequence[Sequence[Value]]
    ) -> tuple[str, list[Param]]:
        """One ``INSERT ... VALUES`` of ``rows`` with a parameter per value."""
        d = self.dialect
        params: list[Param] = []
        tuples = []
        for i, row in enumerate(rows):
            names = []
            for column, value in zip(columns, row, strict=True):
                param = Param(f"r{i}_{column.name}", column.kind, value)
                params.append(param)
                names.append(d.param(param.name))
            tuples.append(f"({', '.join(names)})")
        listed = ", ".join(d.quote_ident(c.name) for c in columns)
        return f"INSERT INTO {ref} ({listed}) VALUES {', '.join(tuples)}", params

    def row_insert(self, table: str) -> str:
        """One row's ``INSERT`` into ``table`` (a parameter per column, in order), for a driver
        that runs it once per row (``executemany``)."""
        ref, columns = (
            (self.runs_ref, self.run_columns)
            if table == RUNS_TABLE
            else (self.loads_ref, LOAD_COLUMNS)
        )
        sql, _ = self.insert(ref, columns, [[None] * len(columns)])
        return sql

    # -- pipeline_runs --------------------------------------------------------------------

    def event_row(
        self, event: RunEvent, now: datetime, next_seq: Callable[[], int]
    ) -> tuple[Value, ...]:
        d = self.dialect
        row: tuple[Value, ...] = (
            event.run_id,
            event.dataset,
            event.month,
            event.step,
            event.state.value,
            event.attempt,
            d.to_timestamp(event.started_at),
            d.to_timestamp(event.finished_at),
            event.rows,
            event.bytes,
            json.dumps(dict(event.labels), sort_keys=True),
            event.error,
            json.dumps(dict(event.details), sort_keys=True),
            d.to_timestamp(event.recorded_at or now),
        )
        if d.history_process:
            row += (event.process,)
        return row + ((next_seq(),) if d.history_sequence else ())

    def insert_events(
        self, events: Sequence[RunEvent], next_seq: Callable[[], int]
    ) -> tuple[str, list[Param]]:
        now = datetime.now(UTC)
        rows = [self.event_row(e, now, next_seq) for e in events]
        return self.insert(self.runs_ref, self.run_columns, rows)

    def select_events(
        self, run_id: str | None, dataset: str | None, since: datetime | None
    ) -> tuple[str, list[Param]]:
        d = self.dialect
        where, params = ["TRUE"], []  # type: list[str], list[Param]
        for column, kind, value in (
            ("run_id", "text", run_id),
            ("dataset", "text", dataset),
            ("since", "timestamp", d.to_timestamp(since)),
        ):
            if value is None:
                continue
            field = "recorded_at >=" if column == "since" else f"{column} ="
            where.append(f"{field} {d.param(column)}")
            params.append(Param(column, kind, value))  # type: ignore[arg-type]
        listed = ", ".join(d.quote_ident(c.name) for c in self.event_columns)
        return (
            f"SELECT {listed} FROM {self.runs_ref}"
            f" WHERE {' AND '.join(where)} ORDER BY recorded_at, {d.insertion_order}",
            params,
        )

    def event(self, row: Sequence[Any]) -> RunEvent:
        d = self.dialect
        return RunEvent(
            run_id=row[0],
            dataset=row[1],
            month=row[2],
            step=row[3],
            state=RunState(row[4]),
            attempt=row[5],
            started_at=d.from_timestamp(row[6]),
            finished_at=d.from_timestamp(row[7]),
            rows=row[8],
            bytes=row[9],
            labels=json.loads(row[10] or "{}"),
            error=row[11],
            details=json.loads(row[12] or "{}"),
            recorded_at=d.from_timestamp(row[13]),
            process=row[14] if d.history_process else None,
        )

    # -- pipeline_loads -------------------------------------------------------------------

    def load_row(self, record: LoadRecord) -> tuple[Value, ...]:
        return (
            record.dataset.value,
            str(record.month),
            record.object_name,
            record.generation,
            record.run_id,
            record.rows_in_file,
            record.rows_inserted,
            self.dialect.to_timestamp(record.loaded_at),
        )

    def insert_load(self, record: LoadRecord) -> tuple[str, list[Param]]:
        return self.insert(self.loads_ref, LOAD_COLUMNS, [self.load_row(record)])

    def select_loads(
        self,
        *,
        object_name: str | None = None,
        generation: str | None = None,
        dataset: Dataset | None = None,
    ) -> tuple[str, list[Param]]:
        d = self.dialect
        where, params = ["TRUE"], []  # type: list[str], list[Param]
        for column, value in (
            ("object_name", object_name),
            ("generation", generation),
            ("dataset", dataset.value if dataset else None),
        ):
            if value is not None:
                where.append(f"{column} = {d.param(column)}")
                params.append(Param(column, "text", value))
        listed = ", ".join(d.quote_ident(c.name) for c in LOAD_COLUMNS)
        return (
            f"SELECT {listed} FROM {self.loads_ref} WHERE {' AND '.join(where)}"
            f" ORDER BY {d.loads_order}",
            params,
        )

    def load(self, row: Sequence[Any]) -> LoadRecord:
        return LoadRecord(
            Dataset(row[0]),
            Month.parse(row[1]),
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            self.dialect.from_timestamp(row[7]) or datetime.min.replace(tzinfo=UTC),
        )
