"""Hostile input: prompt ids and token strings that are HTML or paths, damaged checkpoints,
odd devices, concurrent writers. Pages are checked in a real browser where one is present."""

from __future__ import annotations

import html
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

import hooklab
from hooklab.errors import CheckpointUnavailableError, HooklabError
from hooklab.viz.browser import find_browser, rendered_dom

REPO = Path(__file__).resolve().parents[1]
needs_browser = pytest.mark.skipif(
    find_browser() is None, reason="no Chromium here: install Debian's chromium package"
)

# Each payload, if it ever runs, sets the page title to PWNED.
IMG = "<img src=x onerror=\"document.title='PWNED'\">"
SCRIPT = "</script><script>document.title='PWNED'</script>"
SLASHES = "<img/src=x/onerror=document.title='PWNED'>"  # no whitespace for circuitsvis to mangle
ATTRIBUTE = "x' onfocus='document.title=`PWNED`' autofocus tabindex='1"
HOSTILE_IDS = (IMG, SCRIPT, "../../x", "/tmp/absolute", "..", "", ATTRIBUTE + "\u2028")
TOKENS = (SCRIPT, IMG, SLASHES, "<!--", "\u2028]}'\"", "a&amp;b", "plain")


class HostileTokenizer:
    """Decodes every token to an HTML payload (what a real vocabulary may well hold)."""

    def decode(self, ids):
        return TOKENS[int(ids[0]) % len(TOKENS)]


def _table(prompt_ids, n_layers: int = 4, n_positions: int = len(TOKENS)) -> pd.DataFrame:
    rows = [
        {
            "prompt_id": prompt_id,
            "condition": "native",
            "model": model,
            "n_layers": n_layers,
            "layer": layer,
            "position": position,
            "target_id": position,
            "kl_to_final": (n_layers - 1 - layer) * (position + 1) / 10,
        }
        for prompt_id in prompt_ids
        for model in ("pt", "it")
        for layer in range(n_layers)
        for position in range(n_positions)
    ]
    return pd.DataFrame(rows)


def _without_circuitsvis(page: str) -> str:
    """``page`` less the circuitsvis JavaScript inlined in it (which holds "<script>" itself)."""
    import circuitsvis

    bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    inlined = bundle.read_text().replace("</script>", "")
    assert inlined in page
    return page.replace(inlined, "")


def _title(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    return html.unescape(match.group(1)) if match else ""


# ---------------------------------------------------------------- file names and paths


def test_safe_filename_stays_in_its_folder_and_is_unique(tmp_path):
    from hooklab.viz.tokens import safe_filename

    ids = [*HOSTILE_IDS, "a/b", "a?b", "a b", "instruction-00", "données", "."]
    names = [safe_filename(prompt_id, 0) for prompt_id in ids]
    for prompt_id, name in zip(ids, names, strict=True):
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), (prompt_id, name)
        assert ".." not in name and "/" not in name and not name.startswith(".")
        assert (tmp_path / f"{name}.html").resolve().parent == tmp_path.resolve()
    assert len(set(names)) == len(set(ids))  # distinct ids, distinct names (same index)
    assert safe_filename("instruction-00", 3) == "003-instruction-00"  # readable when safe
    assert safe_filename(IMG, 1) == safe_filename(IMG, 1)  # deterministic


def test_write_token_view_refuses_paths_that_leave_its_folder(tmp_path):
    from hooklab.viz.tokens import safe_filename, write_token_view

    views = tmp_path / "out" / "token_views"
    table = _table(["../../x"])
    args = (HostileTokenizer(), table, "../../x", "native")
    with pytest.raises(HooklabError, match=r"path=.*safe_filename"):
        write_token_view(views / "../../x.html", *args)
    with pytest.raises(HooklabError, match="inside folder="):
        write_token_view(tmp_path / "elsewhere.html", *args, folder=views)
    assert not list(tmp_path.rglob("*.html"))  # nothing written anywhere
    written = write_token_view(views / f"{safe_filename('../../x', 0)}.html", *args, folder=views)
    assert written.resolve().parent == views.resolve()


# ---------------------------------------------------------------- HTML escaping


def test_json_for_html_round_trips_and_cannot_close_a_script():
    from hooklab.viz.tokens import json_for_html

    value = {"tokens": [*TOKENS, *HOSTILE_IDS], "nested": {"<k>": "&\u2029"}}
    text = json_for_html(value)
    assert json.loads(text) == value
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}


def test_token_view_keeps_every_token_inside_its_script(tmp_path):  # noqa: ARG001
    from hooklab.viz.tokens import token_view_html

    page = _without_circuitsvis(token_view_html(HostileTokenizer(), _table([IMG]), IMG, "native"))
    # two views, two script elements: no token may end one early or open another
    assert page.count("<script") == 2 and page.lower().count("</script") == 2
    assert "<img" not in page
    assert html.escape(IMG) in page  # the id is shown, as text


def test_report_escapes_manifest_fields_and_links(tmp_path, monkeypatch):
    import hooklab.viz.report
    from hooklab.viz.report import write_report

    monkeypatch.setattr(hooklab.viz.report, "write_figures", lambda *a: [])  # browser test's

    run_dir = _hostile_run(tmp_path, figures=False)
    view = tmp_path / "out" / "token_views" / f"{IMG}.html"  # a legal, hostile file name
    view.parent.mkdir(parents=True)
    view.write_text("<p>view</p>")
    page = write_report(tmp_path / "out", [run_dir], token_views=[view], title=SCRIPT).read_text()
    assert "<img" not in page and "<script" not in page.lower()
    assert "%3Cimg" in page  # the link is percent-encoded, and still points at the file


@pytest.mark.parametrize("content", [None, "not json", "[]"])
def test_report_on_a_folder_that_is_not_a_run(tmp_path, content):
    from hooklab.viz.report import write_report

    folder = tmp_path / "not-a-run"
    folder.mkdir()
    if content is not None:
        (folder / "manifest.json").write_text(content)
    with pytest.raises(HooklabError, match=r"run_dirs: .*not-a-run"):
        write_report(tmp_path / "out", [folder])


# ---------------------------------------------------------------- the real browser


@pytest.fixture(scope="module")
def tiny():
    return hooklab.load_pair("tiny", device="cpu")


def _hostile_run(root: Path, figures: bool = True, pair=None) -> Path:
    """A readout run folder whose prompt ids and manifest fields are HTML payloads."""
    from hooklab.tables import write_table

    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    if pair is None:
        frame = _table([IMG, SCRIPT])
    else:
        from dataclasses import replace

        from hooklab.prompts import load_prompts
        from hooklab.readout import ReadoutConfig, run_readout, write_readout_summaries

        prompts = [replace(p, id=i) for p, i in zip(load_prompts()[:2], (IMG, SCRIPT), strict=True)]
        frame = run_readout(
            pair, prompts, ReadoutConfig(conditions=("native",), max_new_tokens=3), progress=False
        )
        write_readout_summaries(frame, run_dir)
    manifest = {
        "config": {"experiment": "readout"},
        "pair": {"pt": SCRIPT, "it": IMG},
        "n_prompts": IMG,
        "prompt_set_hash": SCRIPT,
        "seed": ATTRIBUTE,
        "created": IMG,
        "git_commit": SCRIPT,
    }
    write_table(frame, run_dir, "readout", manifest)
    if not figures:
        pd.DataFrame({"condition": [IMG], "region": ["late"], "mean": [1.0]}).to_csv(
            run_dir / "convergence_gap.csv", index=False
        )
        pd.DataFrame({"rule": ["top1"], "condition": [SCRIPT], "mean": [1.0]}).to_csv(
            run_dir / "commitment.csv", index=False
        )
    return run_dir


@needs_browser
def test_hostile_token_view_runs_no_script_in_chromium(tmp_path):
    from hooklab.viz.tokens import safe_filename, write_token_view

    views = tmp_path / "views"
    path = write_token_view(
        views / f"{safe_filename(SCRIPT, 0)}.html",
        HostileTokenizer(),
        _table([SCRIPT]),
        SCRIPT,
        "native",
        folder=views,
    )
    dom = _without_circuitsvis(rendered_dom(path))
    assert _title(dom) == SCRIPT  # the page's own title, not PWNED
    assert "<img" not in dom and "<script>" not in dom  # nothing injected
    assert dom.count("<script crossorigin") == 2  # the two views' own scripts
    assert dom.count("circuits-vis-") >= 2 and dom.count("<span") >= 2 * len(TOKENS)
    for token in (SCRIPT, SLASHES):  # circuitsvis drew the hostile tokens, as text
        assert html.escape(token, quote=False) in dom


@needs_browser
def test_hostile_report_and_figures_run_no_script_in_chromium(tmp_path, tiny):
    from hooklab.viz.report import write_report
    from hooklab.viz.tokens import safe_filename, write_token_view

    run_dir = _hostile_run(tmp_path, pair=tiny)
    out = tmp_path / "out"
    views = out / "token_views"
    table = pd.read_parquet(run_dir / "readout.parquet")
    written = [
        write_token_view(
            views / f"{safe_filename(prompt_id, i)}.html",
            tiny.tokenizer,
            table,
            prompt_id,
            "native",
            folder=views,
        )
        for i, prompt_id in enumerate((IMG, SCRIPT))
    ]
    hostile_name = views / f"{IMG}.html"
    hostile_name.write_text("<p>a view with a hostile file name</p>")
    report = write_report(out, [run_dir], token_views=[*written, hostile_name], title="safe")
    dom = rendered_dom(report)
    assert _title(dom) == "safe"
    assert "<img" not in dom and "<script" not in dom
    assert dom.count("<iframe") == 3 and dom.count("<li>") == 3
    heatmap = rendered_dom(out / "figures" / "heatmap.html")
    assert "main-svg" in heatmap and "<img" not in heatmap and "PWNED" not in _title(heatmap)
    assert html.escape(IMG, quote=False) in heatmap  # the id shown as text in the title
    for view, prompt_id in zip(written, (IMG, SCRIPT), strict=True):
        assert _title(rendered_dom(view)) == prompt_id


# ---------------------------------------------------------------- atomic files


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_honours_the_umask(tmp_path, umask):
    from hooklab.atomic import atomic_write_text

    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


class _SlowWriter(threading.Thread):
    """An ``atomic_write`` that stays in the middle of writing until released."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.started, self.release = path, threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self):
        from hooklab.atomic import atomic_write

        def write(temporary):
            Path(temporary).write_text("half")
            self.started.set()
            assert self.release.wait(30)
            Path(temporary).write_text("whole")

        try:
            atomic_write(self.path, write)
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self.error = error

    def __enter__(self):
        self.start()
        assert self.started.wait(30)
        return self

    def __exit__(self, *exc_info):
        self.release.set()
        self.join(30)

    def finish(self) -> str:
        self.release.set()
        self.join(30)
        assert self.error is None, self.error
        return self.path.read_text()


def test_clean_stale_temporaries_spares_live_writers_and_other_targets(tmp_path):
    from hooklab.atomic import clean_stale_temporaries

    stale_manifest = tmp_path / ".manifest.json.k1ll3d.tmp"
    stale_table = tmp_path / ".readout.parquet.k1ll3d.tmp"
    for path in (stale_manifest, stale_table):
        path.write_text("left by a SIGKILL")
    (tmp_path / "sub").mkdir()
    nested = tmp_path / "sub" / ".manifest.json.x.tmp"
    nested.write_text("not top level")
    with _SlowWriter(tmp_path / "manifest.json") as writer:
        assert clean_stale_temporaries(tmp_path, ["manifest.json"]) == 1
        assert not stale_manifest.exists() and stale_table.exists()
        assert clean_stale_temporaries(tmp_path, None) == 1  # the table's; not the live one
        assert len(list(tmp_path.glob(".manifest.json.*.tmp"))) == 1  # still being written
        assert writer.finish() == "whole"
    assert nested.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("own_parts", [True, False])
def test_a_late_shard_leaves_a_running_shards_temporaries_alone(tmp_path, own_parts):
    from hooklab.runs.storage import PartStore, plan_parts, select_shard

    parts = plan_parts([f"p{i}" for i in range(4)], 1)
    first, late = select_shard(parts, (0, 2)), select_shard(parts, (1, 2))
    store = PartStore(tmp_path)
    frame = pd.DataFrame({"x": [1, 2]})
    stale_first = store.folder / f".{first[1].name}.parquet.k1ll3d.tmp"
    stale_late = store.folder / f".{late[0].name}.parquet.k1ll3d.tmp"
    for path in (stale_first, stale_late):
        path.write_text("left by a SIGKILL")

    with _SlowWriter(store.folder / f"{first[0].name}.parquet") as writer:  # shard 0, writing
        removed = store.clean_temporaries(late if own_parts else None)  # shard 1 starts
        assert writer.finish() == "whole"  # shard 0's write went through
    assert not stale_late.exists()
    assert stale_first.exists() == own_parts  # another shard's: only a global clean takes it
    assert removed == (1 if own_parts else 2)
    store.write(first[0], frame, {})
    assert store.is_done(first[0])


# ---------------------------------------------------------------- synthetic tokenizer folder


def test_synthetic_models_use_a_private_tokenizer_folder(tmp_path, monkeypatch):
    import tempfile

    import transformers

    from hooklab.synthetic import build_model_from_config
    from hooklab.synthetic.tokenizer import saved_tokenizer_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    build_model_from_config(config)
    assert not (tmp_path / "hooklab-synthetic-tokenizer").exists()  # no shared fixed name
    folder = saved_tokenizer_folder()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    code = (
        "from hooklab.synthetic.tokenizer import saved_tokenizer_folder as f; "
        "import transformers; p = f(); transformers.AutoTokenizer.from_pretrained(p); print(p)"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = [Path(child.communicate(timeout=120)[0].strip()) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert len({*paths, folder}) == 3  # one folder per process
    assert not any(path.exists() for path in paths)  # each removed when its process ended


# ---------------------------------------------------------------- damaged checkpoints, devices


@pytest.fixture()
def damaged(tmp_path):
    from hooklab.synthetic import write_tiny_pair

    return write_tiny_pair("qwen3", tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_weights_raise_a_hooklab_error(damaged, damage):
    weights = damaged.pt / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        weights.unlink()
    expected = "holds no weights" if damage == "missing" else "truncated or damaged"
    with pytest.raises(CheckpointUnavailableError, match=rf"pt=.*{expected}.*(again)"):
        hooklab.load_pair(pt=damaged.pt, it=damaged.it, device="cpu")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu", "meta", "cuda:99"])
def test_unknown_devices_are_refused_before_loading(tiny_pair, device, monkeypatch):
    import hooklab.pair

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hooklab.pair, "boot_bridge", no_load)
    tiny = tiny_pair("qwen3")
    with pytest.raises(HooklabError, match=rf"device='{re.escape(device)}'.*use"):
        hooklab.load_pair(pt=tiny.pt, it=tiny.it, device=device)


@pytest.mark.parametrize("damage", ["truncated", "missing", "not tensors"])
def test_damaged_lens_file_raises_a_hooklab_error(tiny, tmp_path, damage):
    from hooklab.lens.tuned import PARAMS_FILE, TunedLens

    folder = TunedLens.from_model(tiny.pt).save(tmp_path / "lens")
    params = folder / PARAMS_FILE
    if damage == "truncated":
        params.write_bytes(params.read_bytes()[:100])
    elif damage == "missing":
        params.unlink()
    else:
        torch.save({"translators": "a string"}, params)
    with pytest.raises(HooklabError, match=r"(lens folder|params\.pt).*(again|pass |Re-save)"):
        TunedLens.load(folder, tiny.pt)
    assert TunedLens.load(TunedLens.from_model(tiny.pt).save(tmp_path / "ok"), tiny.pt)
