"""docs/ matches the code: every module is in the module map, every page is linked, and the
worked example of docs/experiments.md passes the project's lint and gives the figure it states."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _modules() -> list[str]:
    package = ROOT / "hooklab"
    return sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))


def _module_rows() -> list[str]:
    text = (DOCS / "architecture.md").read_text()
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_every_module_is_in_the_module_map():
    rows = _module_rows()
    named = {m for row in rows for m in re.findall(r"`([\w/]+\.py)`", row.split("|")[1])}
    missing = []
    for module in _modules():
        if module in named:
            continue
        package, _, name = module.rpartition("/")
        package_rows = [r for r in rows if r.startswith(f"| `{package}/`")]
        if package and package_rows and f"`{name}`" in package_rows[0]:
            continue
        if name == "__init__.py" and (package_rows or any(n.startswith(package) for n in named)):
            continue  # a package's __init__ is its row (or its modules' rows)
        missing.append(module)
    assert not missing, f"docs/architecture.md's module map misses {missing}"


def test_docs_readme_links_every_page():
    index = (DOCS / "README.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


def _worked_example() -> str:
    text = (DOCS / "experiments.md").read_text()
    section = text.split("### 1. Write `hooklab/experiments/final_entropy.py`", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def test_worked_example_passes_ruff():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--stdin-filename",
            "hooklab/experiments/final_entropy.py",
            "-",
        ],
        input=_worked_example(),
        text=True,
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


_RUN_EXAMPLE = """
import sys, types
mod = types.ModuleType("final_entropy_doc")
sys.modules[mod.__name__] = mod
exec(compile(sys.stdin.read(), "final_entropy.py", "exec"), mod.__dict__)
import pandas as pd
from hooklab.runs import PairSpec, PromptSpec, RunSpec, run_spec
out = sys.argv[1]
run_spec(RunSpec(experiment="final_entropy", out=out, pair=PairSpec(name="tiny"),
                 prompts=PromptSpec(limit=2), config=mod.FinalEntropyConfig(batch_size=2)))
row = pd.read_csv(out + "/entropy_summary.csv").set_index("model").loc["it-pt"]
print(f"RESULT {row['mean']:+.3f}")
"""


def test_worked_example_gives_the_figure_it_states(tmp_path):
    stated = re.search(
        r"the IT − PT difference was ([+−-]\d\.\d+)\s+nats", (DOCS / "experiments.md").read_text()
    )
    assert stated, "docs/experiments.md states no IT − PT figure"
    result = subprocess.run(
        [sys.executable, "-c", _RUN_EXAMPLE, str(tmp_path / "run")],
        input=_worked_example(),
        text=True,
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    measured = re.search(r"RESULT (\S+)", result.stdout).group(1)  # type: ignore[union-attr]
    assert measured == stated.group(1).replace("−", "-")


def _definitions() -> str:
    return (DOCS / "definitions.md").read_text()


def test_definitions_cover_every_experiment():
    from hooklab.experiment import registered_experiments

    text = _definitions()
    headings = re.findall(r"^## \d+\. (.*)$", text, flags=re.M)
    for name in registered_experiments():
        assert f"`hooklab {name}`" in text or name in ("readout", "graft", "behave"), name
    for topic in ("Opposition", "Attention entropy", "Token support", "Component patching"):
        assert any(h.startswith(topic) for h in headings), topic
    for topic in ("Weight change", "Steering", "Behaviour scorers", "The study's claims"):
        assert any(h.startswith(topic) for h in headings), topic


def test_definitions_give_every_scorer_rule_and_pattern_in_full():
    import hooklab.behaviour  # noqa: F401  (registers the scorers)
    from hooklab.behaviour.scorers import REFUSAL_PATTERNS, SCORERS
    from hooklab.mechanism.token_classes import FUNCTION_WORDS

    text = _definitions()
    section = text.split("## 18. Behaviour scorers", 1)[1].split("\n## ", 1)[0]
    for name in SCORERS:
        assert f"* **`{name}`**" in section, name
    for pattern in REFUSAL_PATTERNS:
        assert pattern.pattern in section, pattern.pattern
    assert "…" not in section
    flat = " ".join(text.split())
    words = flat.split("the 176 words of `FUNCTION_WORDS`:", 1)[1].split(";", 1)[0]
    assert len(FUNCTION_WORDS) == 176
    assert set(words.split()) == set(FUNCTION_WORDS)
