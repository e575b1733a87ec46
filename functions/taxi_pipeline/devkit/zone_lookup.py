"""A synthetic ``taxi_zone_lookup.csv`` in the published layout, with the real file's quirks.

The TLC's file (``{mirror}/misc/taxi_zone_lookup.csv``) quotes every text and its header:
``"LocationID","Borough","Zone","service_zone"``, then one line per zone 1..265, e.g.
``1,"EWR","Newark Airport","EWR"``, ``264,"Unknown","NV","N/A"``, ``265,"Unknown","NA","N/A"``.
The generated one keeps those shapes and adds what a reader must survive: names with commas
(``"Flushing Meadows, Corona Park"``), a doubled quote inside a name, and the ``NA`` / ``N/A``
texts that a careless CSV reader turns into NULL. :attr:`GeneratedZones.rows` is what the table
must hold afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from taxi_pipeline.devkit.generator import MANHATTAN_ZONES
from taxi_pipeline.domain.lookups import TAXI_ZONES

ZONES: Final = 265
_FIXED: Final = {
    1: ("EWR", "Newark Airport", "EWR"),
    132: ("Queens", "JFK Airport", "Airports"),
    138: ("Queens", "LaGuardia Airport", "Airports"),
    264: ("Unknown", "NV", "N/A"),
    265: ("Unknown", "NA", "N/A"),
}
_BOROUGHS: Final = ("Queens", "Bronx", "Brooklyn", "Staten Island")
_NAMES: Final = (
    "Astoria",
    "Flushing Meadows, Corona Park",
    "Bay Ridge",
    'Bay Terrace "Fort Totten"',
    "Allerton/Pelham Gardens",
    "Williamsburg (North Side)",
    "Stuy Town/Peter Cooper Village",
)

Zone = tuple[int, str, str, str]


@dataclass(frozen=True)
class GeneratedZones:
    path: Path
    rows: tuple[Zone, ...]
    """(LocationID, Borough, Zone, service_zone) per line, in file order."""

    @property
    def name(self) -> str:
        return self.path.name


def zone_rows(count: int = ZONES, seed: int = 0) -> tuple[Zone, ...]:
    """Zones 1..``count``: the real file's fixed ones, Manhattan's yellow zones, the rest
    spread over the other boroughs; every seventh name holds a comma or a quote."""
    out = []
    for location in range(1, count + 1):
        if location in _FIXED:
            out.append((location, *_FIXED[location]))
        elif location in MANHATTAN_ZONES:
            name = _NAMES[(location + seed) % len(_NAMES)]
            out.append((location, "Manhattan", f"{name} {location}", "Yellow Zone"))
        else:
            borough = _BOROUGHS[(location * 7 + seed) % len(_BOROUGHS)]
            name = _NAMES[(location + seed) % len(_NAMES)]
            out.append((location, borough, f"{name} {location}", "Boro Zone"))
    return tuple(out)


def write_zone_lookup(
    directory: Path, rows: Sequence[Zone] | None = None, *, quote_header: bool = True
) -> GeneratedZones:
    """Write ``directory/misc/taxi_zone_lookup.csv`` (the mirror's ``misc`` tag, as
    :func:`~taxi_pipeline.devkit.source_server.serve_directory` serves it) with ``rows``
    (default :func:`zone_rows`), every text quoted like the published file."""
    chosen = tuple(rows if rows is not None else zone_rows())
    path = directory / "misc" / TAXI_ZONES.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join(_quoted(n) if quote_header else n for n in TAXI_ZONES.names)
    lines = [header] + [
        ",".join([str(location), *(_quoted(t) for t in texts)]) for location, *texts in chosen
    ]
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    tmp.replace(path)
    return GeneratedZones(path, chosen)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
