"""Open the report in headless Chromium (Debian's ``chromium`` package, installed by the
project's set-up) and check that the page loads and that no image, PNG or SVG, is missing.

A copy of the page with a small checking script is loaded from disk (file://);
the script marks every image that did not load, and ``--dump-dom`` prints the result.
A second load with one PNG deleted checks that the check itself can fail.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from codiag.reports.build import build
from codiag.reports.synthetic import write_synthetic_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium); the browser check is skipped")

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute('src'); });
  var out = document.createElement('pre');
  out.id = 'codiag-check';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, title: document.title});
  document.body.appendChild(out);
});
</script>"""


def open_in_chromium(page: Path) -> dict:
    """Load ``page`` plus every SVG it links, as images, in headless Chromium; return the check."""
    html = page.read_text(encoding="utf-8")
    svgs = sorted(set(re.findall(r'href="([^"]+\.svg)"', html)))
    extra = "".join(f'<img class="svg-check" src="{s}" alt="">' for s in svgs)
    check = page.with_name("_browser_check.html")
    check.write_text(html.replace("</body>", extra + CHECK + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                            "--virtual-time-budget=15000", "--dump-dom", check.resolve().as_uri()],
                           capture_output=True, text=True, timeout=90)
    check.unlink()
    m = re.search(r'<pre id="codiag-check">(.*?)</pre>', p.stdout, re.S)
    assert m, f"page did not load (rc {p.returncode}): {p.stderr[-2000:]}"
    return {**json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), "n_svg": len(svgs)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    runs = [write_synthetic_run(root / "fgsm", epochs=4, co_epoch=3),
            write_synthetic_run(root / "zerograd", method="zerograd", epochs=4, co_epoch=None, seed=1)]
    return build(runs, root / "report", figures={"training_curves", "filter_norms", "overlay_curves",
                                                 "lemma1"})


def test_page_loads_in_chromium_and_no_image_is_missing(report):
    n_figures = sum(len(v) for v in report.figures.values())
    assert n_figures == 2 * 2 + 1 + 1
    result = open_in_chromium(report.page)
    assert result["title"] == "codiag report"
    assert result["n_svg"] == n_figures
    assert result["images"] == 2 * n_figures            # each PNG shown, each SVG loaded as an image
    assert result["broken"] == []


def test_the_check_sees_a_missing_image(report):
    victim = report.figures["fgsm"][0].files["png"]
    saved = victim.read_bytes()
    victim.unlink()
    try:
        result = open_in_chromium(report.page)
    finally:
        victim.write_bytes(saved)
    assert result["broken"] == [victim.relative_to(report.page.parent).as_posix()]
