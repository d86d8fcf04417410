"""Headless Chromium (Debian's ``chromium`` package) as a renderer: static PNGs of the offline
HTML figures, and the DOM after scripts ran (for checks). Networking is blocked, so a page that
needed the network would show it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_browser", "screenshot", "rendered_dom"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or ``None`` (install Debian's ``chromium``)."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    browser = find_browser()
    if browser is None:
        raise RuntimeError(
            "no Chromium found: install Debian's chromium package "
            "(apt-get install chromium) to render PNGs"
        )
    with tempfile.TemporaryDirectory(prefix="hooklab-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1100,
    height: int = 560,
    timeout: float = 90,
) -> Path:
    """Render an HTML file to a PNG (offline)."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [f"--screenshot={png_path}", f"--window-size={width},{height}", html_path.as_uri()], timeout
    )
    if not png_path.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot of {html_path}")
    return png_path


def rendered_dom(html_path: str | Path, *, timeout: float = 90) -> str:
    """The page's DOM after its scripts ran (offline)."""
    return _run(["--dump-dom", Path(html_path).resolve().as_uri()], timeout).stdout
