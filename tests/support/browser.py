"""Headless Chromium (Debian's ``chromium``, installed by ``scripts/setup-dev``) for checking a
page as a person would see it: a screenshot, and the layout the browser computed."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

WINDOW = (1400, 900)

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is missing: scripts/setup-dev installs Debian's chromium"
    return found


def _run(page: Path, profile: Path, *extra: str) -> str:
    result = subprocess.run(
        [
            chromium(),
            *_FLAGS,
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
            *extra,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(page: Path, png: Path, profile: Path) -> tuple[int, int]:
    """A screenshot of ``page`` in a 1400 x 900 window; returns the PNG's width and height."""
    _run(page, profile, f"--screenshot={png}")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


# Measures, after layout, what the report promises: no horizontal scrolling, and how wide each
# timeline row's bars are drawn (their union per row, in CSS pixels).
_MEASURE = """<script>
const rows = new Map();
for (const bar of document.querySelectorAll('rect.bar')) {
  const box = bar.getBoundingClientRect();
  const y = bar.getAttribute('y');
  const [left, right] = rows.get(y) || [Infinity, -Infinity];
  rows.set(y, [Math.min(left, box.left), Math.max(right, box.right)]);
}
const widest = Math.max(...[...document.body.querySelectorAll('*')].map(
  e => e.getBoundingClientRect().right));
const out = {
  scrollWidth: document.documentElement.scrollWidth,
  viewportWidth: window.innerWidth,
  rightmostElement: widest,
  rowSpans: [...rows.values()].map(([left, right]) => right - left),
};
const pre = document.createElement('pre');
pre.id = 'measured-layout';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def measured_layout(page: Path, profile: Path) -> dict[str, Any]:
    """Lay out a copy of ``page`` with a measuring script added (the page itself has none) and
    read what the browser computed from the dumped DOM."""
    copy = page.with_name(page.stem + ".measured.html")
    copy.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = _run(copy, profile, "--dump-dom")
    start = dom.index('<pre id="measured-layout">') + len('<pre id="measured-layout">')
    result: dict[str, Any] = json.loads(dom[start : dom.index("</pre>", start)])
    return result
