"""The names of a month's tables in every SQL warehouse: what the staging of one month creates
and drops (the final tables are the dataset's, ``Dataset.final_table``)."""

from __future__ import annotations

from taxi_pipeline.domain.datasets import Dataset, Month


def external_table(dataset: Dataset, month: Month) -> str:
    """Name of the month's external table, e.g. ``green_tripdata_2019_01_ext``."""
    return f"{dataset.value}_tripdata_{month.underscored}_ext"


def staging_table(dataset: Dataset, month: Month) -> str:
    """Name of the month's staging table, e.g. ``green_tripdata_2019_01``."""
    return f"{dataset.value}_tripdata_{month.underscored}"
