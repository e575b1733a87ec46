"""The synthetic mirror files: exact layouts, determinism and the quirks of the published ones.

Every check reads the file back with ``gzip`` + ``csv`` only, independently of the generator.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from taxi_pipeline.devkit.generator import GeneratedFile, generate_month, main, write_raw
from taxi_pipeline.domain.datasets import LAYOUTS, Dataset, Month, Upstream, file_name

ROWS = 20_000
MIRRORED = [d for d in Dataset if d.spec.find_publication(Upstream.MIRROR)]
"""The datasets the mirror publishes as CSV (fhvhv is the TLC's Parquet only)."""
TAXIS = [Dataset.YELLOW, Dataset.GREEN]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
AMOUNT = re.compile(r"^\d+\.\d{2}$")
JAN = Month(2019, 1)
MAR = Month(2019, 3)


def read_rows(path: Path) -> tuple[str, list[dict[str, str]]]:
    """Header line and rows as dicts, parsed with the standard library only."""
    with gzip.open(path, "rt", newline="") as text:
        header = text.readline().rstrip("\n")
        names = header.split(",")
        rows = []
        for fields in csv.reader(text):
            assert len(fields) == len(names), f"line with {len(fields)} fields: {fields}"
            rows.append(dict(zip(names, fields, strict=True)))
    return header, rows


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[Dataset, Month], GeneratedFile]:
    out = tmp_path_factory.mktemp("gen")
    return {
        (ds, month): generate_month(out, ds, month, ROWS, seed=7)
        for ds in MIRRORED
        for month in (JAN, MAR)
    }


@pytest.mark.parametrize("dataset", MIRRORED, ids=str)
def test_header_and_column_count_match_the_published_layout(
    files: dict[tuple[Dataset, Month], GeneratedFile], dataset: Dataset
) -> None:
    generated = files[dataset, JAN]
    assert generated.path.name == file_name(dataset, JAN)
    raw = gzip.decompress(generated.path.read_bytes()).decode()
    lines = raw.split("\n")
    assert lines[0] == LAYOUTS[dataset].header
    assert lines[-1] == ""  # every line ends with a newline, the last one too
    assert len(lines) - 2 == generated.rows == ROWS
    assert '"' not in raw  # the published files quote nothing
    width = len(LAYOUTS[dataset].columns)
    assert {line.count(",") + 1 for line in lines[1:-1]} == {width}
    assert generated.size_bytes == generated.path.stat().st_size
    assert generated.uncompressed_bytes == len(raw.encode())


@pytest.mark.parametrize("dataset", TAXIS, ids=str)
def test_values_are_plausible(
    files: dict[tuple[Dataset, Month], GeneratedFile], dataset: Dataset
) -> None:
    layout = LAYOUTS[dataset]
    _, rows = read_rows(files[dataset, MAR].path)
    for row in rows:
        pickup = datetime.strptime(row[layout.pickup], "%Y-%m-%d %H:%M:%S")
        dropoff = datetime.strptime(row[layout.dropoff], "%Y-%m-%d %H:%M:%S")
        assert dropoff > pickup
        assert 1 <= int(row["PULocationID"]) <= 265
        assert 1 <= int(row["DOLocationID"]) <= 265
        assert row["store_and_fwd_flag"] in {"Y", "N", ""}
        assert row["VendorID"] in {"1", "2", "1.0", "2.0", ""}
        if row["payment_type"]:
            assert 1 <= float(row["payment_type"]) <= 5
        if row["RatecodeID"]:
            assert 1 <= float(row["RatecodeID"]) <= 6
        if row["passenger_count"]:
            assert 0 <= float(row["passenger_count"]) <= 6
        money = [
            "trip_distance",
            "fare_amount",
            "extra",
            "mta_tax",
            "tip_amount",
            "tolls_amount",
            "improvement_surcharge",
            "total_amount",
        ]
        assert all(AMOUNT.match(row[name]) for name in money), row
        parts = [*money[1:-1], "congestion_surcharge"]
        total = sum((Decimal(row[name]) for name in parts if row[name]), Decimal(0))
        assert Decimal(row["total_amount"]) == total
        if dataset is Dataset.GREEN:
            assert row["ehail_fee"] == ""
            assert row["trip_type"] in {"1", "2", ""}
    flags = Counter(row["store_and_fwd_flag"] for row in rows)
    assert flags["N"] > 0.9 * len(rows)
    assert flags["Y"] > 0


@pytest.mark.parametrize("dataset", TAXIS, ids=str)
def test_quirks_of_the_published_files_are_present(
    files: dict[tuple[Dataset, Month], GeneratedFile], dataset: Dataset
) -> None:
    _, rows = read_rows(files[dataset, MAR].path)
    for column in ("passenger_count", "RatecodeID", "payment_type", "VendorID"):
        assert any(row[column] == "" for row in rows), f"no empty {column}"
        assert any(row[column].endswith(".0") for row in rows), f"no 1.0 spelling in {column}"
    unknown = [row for row in rows if row["payment_type"] == ""]
    assert 0.005 * len(rows) < len(unknown) < 0.02 * len(rows)
    assert all(row["passenger_count"] == row["RatecodeID"] == "" for row in unknown)
    # congestion_surcharge: missing in 2019-01 (introduced 2019-02), filled afterwards.
    _, january = read_rows(files[dataset, JAN].path)
    assert sum(row["congestion_surcharge"] == "" for row in january) > 0.99 * len(january)
    assert sum(row["congestion_surcharge"] != "" for row in rows) > 0.95 * len(rows)


@pytest.mark.parametrize("dataset", MIRRORED, ids=str)
def test_out_of_month_rows_and_duplicates_are_counted_exactly(
    files: dict[tuple[Dataset, Month], GeneratedFile], dataset: Dataset
) -> None:
    generated = files[dataset, JAN]
    pickup = LAYOUTS[dataset].pickup
    _, rows = read_rows(generated.path)
    strays = [row[pickup] for row in rows if not row[pickup].startswith("2019-01-")]
    assert len(strays) == generated.out_of_month_rows > 0
    stray_dates = {datetime.strptime(s, "%Y-%m-%d %H:%M:%S").date() for s in strays}
    assert stray_dates == set(generated.stray_pickup_dates)
    assert {d.year for d in stray_dates} >= {2008, 2088}  # years away, as in the real files
    lines = Counter(tuple(row.values()) for row in rows)
    assert sum(n - 1 for n in lines.values()) == generated.duplicate_rows > 0


def test_fhv_rows_look_like_the_published_ones(
    files: dict[tuple[Dataset, Month], GeneratedFile],
) -> None:
    """Bases B0xxxx, zones often empty and sometimes written "80.0", SR_Flag mostly empty."""
    layout = LAYOUTS[Dataset.FHV]
    _, rows = read_rows(files[Dataset.FHV, MAR].path)
    for row in rows:
        assert re.fullmatch(r"B0\d{4}", row["dispatching_base_num"]), row
        pickup = datetime.strptime(row[layout.pickup], "%Y-%m-%d %H:%M:%S")
        assert datetime.strptime(row[layout.dropoff], "%Y-%m-%d %H:%M:%S") > pickup
        for zone in ("PUlocationID", "DOlocationID"):
            assert row[zone] == "" or 1 <= float(row[zone]) <= 265
            assert row[zone] == "" or float(row[zone]) == int(float(row[zone]))
        assert row["SR_Flag"] in {"", "1", "1.0"}
        assert row["Affiliated_base_number"] == "" or row["Affiliated_base_number"][:2] == "B0"
    for zone, share in (("PUlocationID", 0.2), ("DOlocationID", 0.15)):
        empty = sum(row[zone] == "" for row in rows) / len(rows)
        assert share - 0.02 < empty < share + 0.02, zone
        assert any(row[zone].endswith(".0") for row in rows), f"no 80.0 spelling in {zone}"
    flagged = sum(row["SR_Flag"] != "" for row in rows) / len(rows)
    assert 0.03 < flagged < 0.07
    bases = Counter(row["dispatching_base_num"] for row in rows)
    assert bases.most_common(1)[0][1] > 2 * len(rows) / len(bases), "a few bases dominate"
    same = sum(row["Affiliated_base_number"] == row["dispatching_base_num"] for row in rows)
    assert same > 0.8 * len(rows)


def test_a_dataset_the_mirror_does_not_publish_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no fhvhv CSV"):
        generate_month(tmp_path, Dataset.FHVHV, MAR, 10)
    assert list(tmp_path.iterdir()) == []


def test_explicit_stray_and_duplicate_counts(tmp_path: Path) -> None:
    generated = generate_month(
        tmp_path, Dataset.GREEN, JAN, 1000, seed=3, stray_rows=25, duplicate_rows=40
    )
    _, rows = read_rows(generated.path)
    assert sum(not row["lpep_pickup_datetime"].startswith("2019-01-") for row in rows) == 25
    assert sum(n - 1 for n in Counter(tuple(r.values()) for r in rows).values()) == 40
    clean = generate_month(tmp_path / "clean", Dataset.GREEN, JAN, 1000, 3, stray_rows=0)
    _, rows = read_rows(clean.path)
    assert all(row["lpep_pickup_datetime"].startswith("2019-01-") for row in rows)
    assert clean.out_of_month_rows == 0
    assert clean.stray_pickup_dates == ()


def test_same_seed_gives_identical_bytes_whatever_the_thread_count(tmp_path: Path) -> None:
    one = generate_month(tmp_path / "a", Dataset.YELLOW, JAN, 50_000, seed=11, threads=1)
    two = generate_month(tmp_path / "b", Dataset.YELLOW, JAN, 50_000, seed=11, threads=2)
    four = generate_month(tmp_path / "c", Dataset.YELLOW, JAN, 50_000, seed=11, threads=4)
    assert one.path.read_bytes() == two.path.read_bytes() == four.path.read_bytes()
    other = generate_month(tmp_path / "d", Dataset.YELLOW, JAN, 50_000, seed=12)
    assert other.path.read_bytes() != one.path.read_bytes()


def test_datasets_and_months_do_not_share_draws(tmp_path: Path) -> None:
    yellow = generate_month(tmp_path, Dataset.YELLOW, JAN, 200, seed=1, stray_rows=0)
    green = generate_month(tmp_path, Dataset.GREEN, JAN, 200, seed=1, stray_rows=0)
    march = generate_month(tmp_path, Dataset.YELLOW, MAR, 200, seed=1, stray_rows=0)
    trips = [
        [(r["PULocationID"], r["DOLocationID"], r["trip_distance"]) for r in read_rows(f.path)[1]]
        for f in (yellow, green, march)
    ]
    assert trips[0] != trips[1]
    assert trips[0] != trips[2]


def test_no_partial_file_is_left_and_rewrites_replace(tmp_path: Path) -> None:
    generate_month(tmp_path, Dataset.YELLOW, JAN, 100, seed=1)
    generated = generate_month(tmp_path, Dataset.YELLOW, JAN, 300, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == [generated.path.name]
    assert len(read_rows(generated.path)[1]) == 300


def test_empty_month_has_the_header_only(tmp_path: Path) -> None:
    generated = generate_month(tmp_path, Dataset.GREEN, JAN, 0)
    assert (
        gzip.decompress(generated.path.read_bytes()).decode()
        == LAYOUTS[Dataset.GREEN].header + "\n"
    )
    assert (generated.rows, generated.out_of_month_rows, generated.duplicate_rows) == (0, 0, 0)


@pytest.mark.parametrize(
    ("rows", "strays", "dups"),
    [(10, 0, 6), (10, 5, 4), (10, -1, 0)],
    ids=["too-many-duplicates", "too-many-quirks", "negative"],
)
def test_impossible_quirk_counts_are_refused(
    tmp_path: Path, rows: int, strays: int, dups: int
) -> None:
    with pytest.raises(ValueError, match=r"duplicates|strays|>= 0"):
        generate_month(tmp_path, Dataset.YELLOW, JAN, rows, stray_rows=strays, duplicate_rows=dups)
    assert list(tmp_path.iterdir()) == []


def test_write_raw_writes_lines_verbatim_and_deterministically(tmp_path: Path) -> None:
    header = LAYOUTS[Dataset.YELLOW].header + ",extra_column"
    lines = ["1,2019-01-01 00:00:00,not-a-time", '"quoted",x']
    first = write_raw(tmp_path / "a.csv.gz", header, lines)
    second = write_raw(tmp_path / "b.csv.gz", header, iter(lines))
    assert gzip.decompress(first.read_bytes()).decode() == "\n".join([header, *lines]) + "\n"
    assert first.read_bytes() == second.read_bytes()


def test_command_line_prints_path_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dataset", "green", "--month", "2019-02", "--rows", "500", "--seed", "4"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(tmp_path / "green_tripdata_2019-02.csv.gz")
    assert "rows=500 " in printed[1]
    assert "out_of_month_rows=3 " in printed[1]
