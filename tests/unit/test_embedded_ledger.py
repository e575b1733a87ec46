"""EmbeddedWarehouse.merge_staged of a plan with a load: DuckDB's insert commits first, then the
SQLite ledger line, so a crash in between leaves rows without a ledger line (the re-run inserts 0
and records the load), never a ledger line without its rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from taxi_pipeline.adapters.embedded import EmbeddedWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.devkit.generator import write_raw
from taxi_pipeline.domain.datasets import Dataset, Month, object_name
from taxi_pipeline.domain.runs import LoadRecord
from taxi_pipeline.pipeline.ports import JobContext, MergePlan, ObjectInfo
from taxi_pipeline.pipeline.steps.merge import pickup_ranges

GREEN, JAN = Dataset.GREEN, Month(2019, 1)
LINE = "2,2019-01-05 10:00:00,2019-01-05 10:10:00,N,1,74,75,1,1.2,7,0,0.5,0,0,,0.3,7.8,2,1,"
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


class Killed(BaseException):
    """The process dies here."""


def _setup(tmp_path: Path) -> tuple[EmbeddedWarehouse, FolderStore, ObjectInfo]:
    lake = FolderStore(tmp_path / "lake")
    lines = [LINE, LINE.replace("10:10:00", "10:11:00", 1)]
    path = write_raw(tmp_path / "green.csv.gz", GREEN.layout.header, lines)
    name = object_name(GREEN, JAN)
    with lake.writer(name, {}) as out:
        out.write(path.read_bytes())
    info = lake.stat(name)
    assert info is not None
    return EmbeddedWarehouse.at(tmp_path / "warehouse.duckdb", threads=1), lake, info


def _merge(
    warehouse: EmbeddedWarehouse, lake: FolderStore, source: ObjectInfo, run_id: str
) -> tuple[int, LoadRecord]:
    context = JobContext(run_id, GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, lake)
    staged = warehouse.stage(source, lake, context)
    load = LoadRecord(GREEN, JAN, source.name, source.generation, run_id, staged.rows, 0, T0)
    ranges = pickup_ranges(staged.pickup_dates)
    try:
        return warehouse.merge_staged(MergePlan(context, ranges, False, load=load)).inserted, load
    finally:
        warehouse.drop_month_objects(GREEN, JAN)


def _rows(warehouse: EmbeddedWarehouse) -> int:
    ((count,),) = warehouse.query("SELECT count(*) FROM green_tripdata").rows
    assert isinstance(count, int)
    return count


def test_the_ledger_line_is_written_after_the_insert_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse, lake, source = _setup(tmp_path)
    try:
        with monkeypatch.context() as patch:

            def die(record: LoadRecord) -> None:
                assert _rows(warehouse) == 2  # the insert is committed by now
                raise Killed

            patch.setattr(warehouse.history, "record_load", die)
            with pytest.raises(Killed):
                _merge(warehouse, lake, source, "green-201901-killed")
        # Rows without a ledger line: the month is not "loaded", so it runs again ...
        assert _rows(warehouse) == 2
        assert warehouse.find_load(source.name, source.generation) is None
        # ... inserts nothing (the ids are there) and records the load.
        inserted, load = _merge(warehouse, lake, source, "green-201901-again")
        assert inserted == 0
        assert warehouse.find_load(source.name, source.generation) == load
        assert _rows(warehouse) == 2
    finally:
        warehouse.close()


def test_no_ledger_line_when_the_insert_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse, lake, source = _setup(tmp_path)
    try:

        def fail(*args: object, **kwargs: object) -> int:
            raise Killed

        monkeypatch.setattr(warehouse.tables, "merge_staged", fail)
        with pytest.raises(Killed):
            _merge(warehouse, lake, source, "green-201901-failed")
        assert warehouse.find_load(source.name, source.generation) is None
        assert warehouse.loads() == []
    finally:
        warehouse.close()


def test_with_a_load_the_ledger_holds_what_was_inserted(tmp_path: Path) -> None:
    warehouse, lake, source = _setup(tmp_path)
    try:
        inserted, load = _merge(warehouse, lake, source, "green-201901-first")
        assert inserted == 2
        recorded = warehouse.find_load(source.name, source.generation)
        assert recorded is not None
        assert recorded.rows_inserted == 2
        assert recorded.run_id == load.run_id
    finally:
        warehouse.close()
