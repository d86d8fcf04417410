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


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements-lock.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_both_commands_install_the_locked_versions_within_the_tested_bounds():
    import tomllib
    from packaging.requirements import Requirement

    for command in _bash_blocks()[:2]:
        assert "-c requirements-lock.txt" in command
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = requirement.name.lower()
        assert name in lock, f"{name} is not in requirements-lock.txt"
        assert requirement.specifier.contains(lock[name]), (name, lock[name], line)
        if name in ("torch", "transformers", "transformer-lens"):
            assert "<" in str(requirement.specifier), f"{name} needs a tested upper bound"


def test_readme_states_the_demo_numbers_hooklab_ships_for_the_locked_versions():
    from hooklab.demo import expected_headlines

    expected = expected_headlines()
    assert expected["versions"] == {
        k: _lock()[k] for k in ("torch", "transformers", "transformer-lens")
    }
    values = expected["headlines"]
    readme = " ".join((ROOT / "README.md").read_text().split())

    def ci(key: str) -> str:
        mean, low, high = values[key]
        return f"{mean:+.2f} nats [{low:.2f}, {high:.2f}]"

    for stated in (
        f"convergence gap {ci('gap/native')}, native",
        f"graft raises late KL ({ci('graft/module/it-to-pt')})",
        f"random control ({values['graft/random/it-to-pt'][0]:+.2f})",
        f"lowers it ({values['graft/module/pt-to-it'][0]:+.2f} nats; "
        f"random {values['graft/random/pt-to-it'][0]:+.2f})",
    ):
        assert stated in readme, stated


def test_the_embedded_pair_records_the_versions_it_was_verified_with():
    import json

    training = json.loads((ROOT / "data" / "tiny-pair" / "training.json").read_text())
    lock = _lock()
    verified = training["verified_with"]["versions"]
    assert verified == {k: lock[k] for k in ("torch", "transformers", "transformer-lens")}
    assert "built_with" in training
