"""``taxi-pipeline load PATH``: a hand upload on the embedded default, through the same
finalized-object path (register verifies the whole object, then merge) as a GCS upload."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.e2e import Cli, Source
from taxi_pipeline.domain.datasets import Dataset, Month

JAN = Month(2019, 1)


def _lake_objects(cli: Cli) -> list[str]:
    raw = cli.home / "lake" / "raw"
    return sorted(p.relative_to(cli.home / "lake").as_posix() for p in raw.rglob("*.csv.gz"))


def test_a_local_file_loads_as_a_hand_upload(cli: Cli, source: Source) -> None:
    green = source.files[(Dataset.GREEN, JAN)]
    code, out = cli("load", str(green.path))
    assert code == 0, out
    assert "green 2019-01 green-201901-" in out
    assert f"SUCCESS, rows {green.rows:,} in file, {green.rows:,} inserted" in out
    assert _lake_objects(cli) == ["raw/green/green_tripdata_2019-01.csv.gz"]
    assert cli.rows("SELECT count(*) FROM green_tripdata") == [[str(green.rows)]]
    (labels,) = cli.rows("SELECT DISTINCT labels FROM pipeline_runs WHERE step = 'register'")
    assert "upload" in labels[0]

    code, out = cli("load", str(green.path))  # the same file again: a new generation
    assert code == 0, out
    assert f"SUCCESS, rows {green.rows:,} in file, 0 inserted" in out
    assert cli.rows("SELECT count(*) FROM green_tripdata") == [[str(green.rows)]]


def test_dataset_and_month_can_be_named_for_any_file_name(
    cli: Cli, source: Source, tmp_path: Path
) -> None:
    copy = tmp_path / "february-download.csv.gz"
    shutil.copy(source.files[(Dataset.GREEN, Month(2019, 2))].path, copy)
    code, out = cli("load", str(copy))
    assert code == 2
    assert "cannot tell the dataset and month" in out
    code, out = cli("load", str(copy), "--dataset", "green", "--month", "2019-02")
    assert code == 0, out
    assert _lake_objects(cli) == ["raw/green/green_tripdata_2019-02.csv.gz"]


def test_a_file_with_a_corrupt_gzip_trailer_fails_verification_and_loads_nothing(
    cli: Cli, source: Source, tmp_path: Path
) -> None:
    data = bytearray(source.files[(Dataset.GREEN, JAN)].path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the (last) gzip member
    bad = tmp_path / "green_tripdata_2019-01.csv.gz"
    bad.write_bytes(bytes(data))
    code, out = cli("load", str(bad))
    assert code == 1, out
    assert "FAILED" in out
    assert "not a valid gzip stream" in out
    assert cli.rows("SELECT count(*) FROM pipeline_loads") == [["0"]]
    tables = cli.rows("SELECT table_name FROM information_schema.tables ORDER BY 1")
    assert ["green_tripdata"] not in tables or cli.rows("SELECT count(*) FROM green_tripdata") == [
        ["0"]
    ]
