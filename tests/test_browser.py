"""A real browser (headless Chromium, networking blocked) renders the demo's report, figures
and token views; PNGs are real, non-blank images."""

from __future__ import annotations

import pytest
from PIL import Image, ImageStat

from hooklab.cli import main
from hooklab.viz.browser import find_browser, rendered_dom, screenshot

pytestmark = pytest.mark.skipif(
    find_browser() is None,
    reason="no Chromium here: install Debian's chromium package (.ci/run does) to run the "
    "real-browser checks",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--limit", "4"]) == 0
    return out


def _non_blank(path) -> None:
    image = Image.open(path).convert("L")
    assert image.size[0] >= 800 and image.size[1] >= 400
    assert ImageStat.Stat(image).stddev[0] > 5  # not a blank page


def test_figures_render_offline_as_plots_and_pngs(demo):
    for name in ("convergence", "commitment", "heatmap", "graft_effects"):
        dom = rendered_dom(demo / "figures" / f"{name}.html")
        assert "main-svg" in dom, name  # plotly drew its SVG from the inlined plotly.js
        _non_blank(demo / "figures" / f"{name}.png")


def test_token_view_renders_tokens_offline(demo):
    view = sorted((demo / "token_views").glob("*.html"))[0]
    dom = rendered_dom(view)
    assert dom.count("<span") >= 4  # circuitsvis rendered one element per token
    assert "PT:" in dom and "IT:" in dom and dom.count("circuits-vis-") >= 2  # both views
    _non_blank(screenshot(view, demo / "token_view.png", height=500))


def test_report_renders(demo):
    dom = rendered_dom(demo / "report.html")
    assert "<table" in dom and "<iframe" in dom
    _non_blank(screenshot(demo / "report.html", demo / "report.png", height=1400))
