"""The README's first two commands are a new user's whole set-up; CI must run the second."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_first_command_installs_and_runs_the_main_job():
    first = _bash_blocks()[0].strip()
    assert "pip install" in first and "torch==2.13.0" in first
    assert first.endswith("hooklab demo")


def test_ci_runs_the_readme_test_command_verbatim():
    second = _bash_blocks()[1].strip()
    assert "pytest" in second and "pip install" in second
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in ci_lines


def test_readme_and_notebooks_import_only_the_public_api():
    import hooklab

    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({p.name: p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb")})
    for name, text in texts.items():
        assert not re.search(r"from\s+hooklab\.\w", text), f"{name} imports from a submodule"
        assert not re.search(r"\bimport\s+hooklab\.\w", text), f"{name} imports a submodule"
        blocks = re.findall(r"from hooklab import \(([^)]*)\)", text)
        blocks += re.findall(r"from hooklab import ([\w, ]+)", text)
        for block in blocks:
            for word in re.findall(r"[A-Za-z_]\w*", block.replace("\\n", " ")):
                assert word in hooklab.__all__, f"{name}: {word} is not in hooklab.__all__"


def test_nothing_points_outside_the_repository():
    for path in [
        ROOT / "README.md",
        *ROOT.glob("hooklab/**/*.py"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("notebooks/*.ipynb"),
    ]:
        text = path.read_text()
        assert "DESIGN" + ".md" not in text and "../" + "shared" not in text, path
