"""EmbeddedWarehouse: the embedded default's warehouse port, from two stores.

The trip tables (final, external, staging) are DuckDB's (:class:`DuckDbWarehouse`); the run
history and the load ledger are SQLite's (:class:`SqliteHistory`), because they must be read
and written by several processes while one of them holds the DuckDB file for a merge.

Crash consistency of the split: :meth:`EmbeddedWarehouse.merge_staged` records its load in the
ledger only after DuckDB committed the insert (the other warehouses write both in one
transaction). A crash between the two leaves rows without a ledger line; the re-run
stages again and inserts 0 rows (their ids are there) and then records the load. A ledger line
without its rows cannot happen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from taxi_pipeline.adapters.duckdb.warehouse import HISTORY_TABLES, DuckDbWarehouse
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.pipeline.ports import (
    JobContext,
    LakeReader,
    MergeOutcome,
    MergePlan,
    ObjectInfo,
    QueryResult,
    StagingSummary,
)


class EmbeddedWarehouse:
    """DuckDB for the tables (:class:`Staging`, :class:`UserQueries`), SQLite for
    ``pipeline_runs`` and ``pipeline_loads`` (:class:`RunHistory`, :class:`LoadLedger`)."""

    def __init__(self, tables: DuckDbWarehouse, history: SqliteHistory) -> None:
        self.tables = tables
        self.history = history

    @classmethod
    def at(cls, warehouse: Path, history: Path | None = None, **options: Any) -> EmbeddedWarehouse:
        """DuckDB at ``warehouse``, the history beside it (``runs.sqlite``, as in a home);
        ``options`` go to :class:`DuckDbWarehouse`."""
        return cls(
            DuckDbWarehouse(warehouse, **options),
            SqliteHistory(history or warehouse.with_name("runs.sqlite")),
        )

    def close(self) -> None:
        try:
            self.tables.close()
        finally:
            self.history.close()

    # -- tables: DuckDB -----------------------------------------------------------------------

    @property
    def stages_in_final_table(self) -> bool:
        return self.tables.stages_in_final_table

    def ensure_final_table(self, dataset: Dataset) -> None:
        self.tables.ensure_final_table(dataset)

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        return self.tables.create_external_table(dataset, month, source, lake)

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        return self.tables.stage(source, lake, context)

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        """DuckDB's insert (a replacing plan's delete with it, one transaction), committed; then
        the plan's load in the SQLite ledger: never a ledger line without its rows (see the
        module's note on crashes in between)."""
        outcome = self.tables.merge_staged(plan)
        load = plan.recorded_load(outcome.inserted)
        if load is not None:
            self.history.record_load(load)
        return outcome

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        self.tables.drop_month_objects(dataset, month)

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        return self.tables.replace_lookup(lookup, source, lake)

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        return self.tables.lookup_rows(lookup)

    def query(self, sql: str) -> QueryResult:
        """The user's query on DuckDB, with the history tables it names copied in."""
        named = {
            table: self.history.table_rows(table)
            for table in HISTORY_TABLES
            if re.search(rf"\b{table}\b", sql, re.IGNORECASE)
        }
        return self.tables.query(sql, named)

    def table_names(self) -> list[str]:
        return sorted({*self.tables.table_names(), *HISTORY_TABLES})

    # -- history and ledger: SQLite -------------------------------------------------------

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        self.history.append_run_events(events)

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        return self.history.run_events(run_id, dataset, since)

    def record_load(self, record: LoadRecord) -> None:
        self.history.record_load(record)

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        return self.history.find_load(object_name, generation)

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self.history.loads(dataset)
