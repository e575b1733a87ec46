"""``taxi-pipeline load PATH``: a hand upload on the embedded default.

The file (a mirror's ``.csv.gz`` or a TLC ``.parquet``, told by its name's ending) is copied into
the lake as ``raw/{dataset}/{published file name}`` with no metadata,
exactly as a file someone uploads into the bucket by hand; its finalized-object event then
starts the chain the cloud runs for such an upload: register (which verifies the whole object
first, since no download did), merge. The run id derives from the object's generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taxi_pipeline.cli.common import (
    DATASET_NAMES,
    CliError,
    ExitStatus,
    HomeOption,
    exit_with,
    load_settings,
    open_local,
    parse_month_option,
    print_line,
    result_line,
)
from taxi_pipeline.domain.datasets import Dataset, Month, file_name, object_name, parse_object_name
from taxi_pipeline.domain.formats import CSV_GZ, format_of
from taxi_pipeline.errors import PipelineError

_COPY_CHUNK = 1024 * 1024


def register(app: typer.Typer) -> None:
    """Add this module's command to the main app."""
    app.command()(load)


def identify(path: Path, dataset: Dataset | None, month: str | None) -> tuple[Dataset, Month]:
    """The dataset and month of ``path``: as given, else from its published file name."""
    if dataset is not None and month is not None:
        return dataset, parse_month_option(month, "--month")
    prefix = path.name.split("_", 1)[0]
    try:
        named_dataset, named_month = parse_object_name(f"raw/{prefix}/{path.name}")
    except ValueError as exc:
        raise typer.BadParameter(
            f"cannot tell the dataset and month from the file name {path.name!r} (published"
            " names look like green_tripdata_2019-01.csv.gz or yellow_tripdata_2024-01.parquet);"
            " give --dataset and --month",
            param_hint="PATH",
        ) from exc
    return (
        dataset if dataset is not None else named_dataset,
        parse_month_option(month, "--month") if month is not None else named_month,
    )


def load(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="A month as published: a .csv.gz (the mirror) or a .parquet (the TLC)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    dataset: Annotated[
        Dataset | None,
        typer.Option(
            metavar="DATASET",
            case_sensitive=False,
            help=f"One of {DATASET_NAMES} (default: from the file name).",
        ),
    ] = None,
    month: Annotated[
        str | None, typer.Option(metavar="YYYY-MM", help="YYYY-MM (default: from the file name)")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Load a local file as a hand upload: copied into the lake's raw/, verified, merged."""
    chosen_dataset, chosen_month = identify(path, dataset, month)
    settings = load_settings(home)
    pipeline = open_local(settings)
    fmt = format_of(path.name) or CSV_GZ
    name = object_name(chosen_dataset, chosen_month, fmt)
    try:
        known = set(pipeline.results)
        with path.open("rb") as source, pipeline.ports.lake.writer(name, {}) as target:
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
        pipeline.drain()
    except PipelineError as exc:
        raise CliError(str(exc), ExitStatus.FAILED) from exc
    finally:
        pipeline.close()
    results = [r for run_id, r in pipeline.results.items() if run_id not in known]
    print_line(f"{path} -> {name} ({file_name(chosen_dataset, chosen_month, fmt)})")
    if not results:
        raise CliError(
            f"{chosen_dataset.value} {chosen_month}: no result was recorded", ExitStatus.FAILED
        )
    for result in results:
        print_line(result_line(result))
    exit_with(r.state for r in results)
