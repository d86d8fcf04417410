"""The ``hooklab`` command line. Each subcommand is a thin shell over a library call."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from hooklab.errors import HooklabError

app = typer.Typer(
    name="hooklab",
    help="Model diffing of pretrained / instruction-tuned pairs on TransformerLens bridges.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML tables ([study]): print them as written
)

_COLUMNS = (
    ("softcap", 7),
    ("hf_logits", 10),
    ("resid_identity", 14),
    ("readout", 9),
    ("mlp_path", 9),
)


#: What the parity table's columns hold: softcap is a value, the others differences.
PARITY_LEGEND = (
    "Parity: softcap = the logit soft-cap the model applies ('-': none), a setting, not a "
    "difference;\nthe other columns are max |difference| (hf_logits: bridge vs Hugging Face "
    "eager):"
)


def _pair_parity(pair, hf_sources: dict[str, str] | None) -> list[dict]:
    from hooklab.parity import check_parity, probe_tokens

    tokens = probe_tokens(pair.tokenizer, pair.device)
    rows = []
    for side, model in pair.models().items():
        source = None if hf_sources is None else hf_sources[side]
        report = check_parity(model, tokens, hf_source=source)
        failed = report.failures()
        rows.append({"side": side, **report.to_dict(), "ok": not failed, "failed": failed})
    return rows


def _format_parity(rows: list[dict]) -> str:
    def cell(value, width):
        text = (
            "-" if value is None else (f"{value:.1e}" if isinstance(value, float) else str(value))
        )
        return f"{text:>{width}}"

    header = f"{'model':<18} {'side':<4} " + " ".join(f"{n:>{w}}" for n, w in _COLUMNS) + "  ok"
    lines = [header]
    for row in rows:
        cells = " ".join(cell(row[name], width) for name, width in _COLUMNS)
        name = row.get("shape", row["family"])
        verdict = "yes" if row["ok"] else "NO (" + ", ".join(row.get("failed", [])) + ")"
        lines.append(f"{name:<18} {row['side']:<4} {cells}  {verdict}")
    return "\n".join(lines)


def _exit_unless_ok(rows: list[dict]) -> None:
    """Exit 1 when a parity figure is over its limit (a printed NO must not exit 0)."""
    if not all(row["ok"] for row in rows):
        typer.echo(
            "\nparity FAILED: a figure marked NO is over its limit (docs/dependencies.md says "
            "what each limit is and which library versions are tested).",
            err=True,
        )
        raise typer.Exit(1)


PairOption = Annotated[str | None, typer.Option("--pair", help="Paper pair name, e.g. gemma3-4b.")]
PtOption = Annotated[str | None, typer.Option("--pt", help="PT hub id or folder.")]
ItOption = Annotated[str | None, typer.Option("--it", help="IT hub id or folder.")]
PtRevision = Annotated[str | None, typer.Option(help="PT revision (branch, tag, commit).")]
ItRevision = Annotated[str | None, typer.Option(help="IT revision (branch, tag, commit).")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any).")]
TrustOption = Annotated[bool, typer.Option(help="Run modelling code shipped with a checkpoint.")]


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("hooklab-demo"),
    prompts: Annotated[str, typer.Option(help="JSONL prompt file, or 'builtin'.")] = "builtin",
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    pair: Annotated[
        str | None, typer.Option("--pair", help="Paper pair name (default: the embedded pair).")
    ] = None,
    pt: PtOption = None,
    it: ItOption = None,
    dtype: DtypeOption = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:1.")] = "cpu",
    trust_remote_code: TrustOption = False,
) -> None:
    """The main job on a pair (default: the embedded one): native and same-history readouts, a
    late / mid / early graft sweep with the random control, figures, token views and a report."""
    from hooklab.demo import compare, run_demo
    from hooklab.runs import PairSpec

    embedded = pair is None and pt is None and it is None
    spec = PairSpec(
        name="tiny" if embedded else pair,
        pt=pt,
        it=it,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
    )
    result = run_demo(spec, out, prompts=prompts, limit=limit, echo=typer.echo)
    for headline in result.headlines:
        typer.echo(headline.format())
    if embedded and prompts == "builtin":
        differences = compare(result.headlines, limit=limit)
        for line in differences:
            typer.echo(line, err=True)
        if not differences:
            typer.echo("(the numbers hooklab states for its locked versions: the same)")
    from hooklab.viz.browser import find_browser

    if find_browser() is None:
        typer.echo(
            "(no Chromium found, so the figures were written as HTML only; for PNG copies "
            "install Debian's chromium: apt-get install chromium)"
        )
    typer.echo(f"\nopen {result.report} in a browser (figures and token views work offline)")


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Run folders (readout and/or graft).")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write report.html (default: the first folder).")
    ] = None,
) -> None:
    """Assemble one HTML page from run folders: manifests, summary tables, figures."""
    from hooklab.viz.report import write_report

    typer.echo(f"wrote {write_report(out or folders[0], folders)}")


@app.command()
def parity(
    out: Annotated[
        Path | None, typer.Option(help="Folder for parity.json (default: print only).")
    ] = None,
) -> None:
    """Build tiny random PT/IT pairs of all six families offline; print compatibility and parity
    (bridge vs Hugging Face logits and the identities hooklab relies on)."""
    from hooklab.pair import load_pair
    from hooklab.synthetic import TINY_SHAPES, write_tiny_pair

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hooklab-parity-") as root:
        for i, shape in enumerate(TINY_SHAPES):
            tiny = write_tiny_pair(shape, root)
            pair = load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
            if i == 0:
                typer.echo(f"Compatibility of the tiny {shape} pair ({pair!r}):")
                typer.echo(pair.compatibility.format() + "\n")
            for row in _pair_parity(pair, {"pt": str(tiny.pt), "it": str(tiny.it)}):
                rows.append({"shape": shape, **row})
    typer.echo(PARITY_LEGEND)
    typer.echo(_format_parity(rows))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity.json").write_text(json.dumps(rows, indent=2))
        typer.echo(f"\nwrote {out / 'parity.json'}")
    _exit_unless_ok(rows)


@app.command()
def check(
    pair: Annotated[str | None, typer.Option(help="Paper pair name, e.g. gemma3-4b.")] = None,
    pt: Annotated[str | None, typer.Option(help="PT hub id or folder.")] = None,
    it: Annotated[str | None, typer.Option(help="IT hub id or folder.")] = None,
    pt_revision: Annotated[str | None, typer.Option(help="PT revision.")] = None,
    it_revision: Annotated[str | None, typer.Option(help="IT revision.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any).")
    ] = None,
    hf_parity: Annotated[
        bool, typer.Option(help="Also load each model in Hugging Face and compare logits.")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run modelling code shipped with a checkpoint.")
    ] = False,
) -> None:
    """Load a pair, print its compatibility checks and parity figures."""
    from hooklab.pair import load_pair

    loaded = load_pair(
        pair,
        pt=pt,
        it=it,
        pt_revision=pt_revision,
        it_revision=it_revision,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
    )
    typer.echo(repr(loaded))
    typer.echo(loaded.compatibility.format() + "\n")
    sources = {"pt": loaded.pt_source.name_or_path, "it": loaded.it_source.name_or_path}
    rows = _pair_parity(loaded, sources if hf_parity else None)
    typer.echo(_format_parity(rows))
    _exit_unless_ok(rows)


def _load_pair_from_options(pair, pt, it, pt_revision, it_revision, dtype, device, trust):
    from hooklab.pair import load_pair

    return load_pair(
        pair,
        pt=pt,
        it=it,
        pt_revision=pt_revision,
        it_revision=it_revision,
        dtype=dtype,
        device=device,
        trust_remote_code=trust,
    )


ShardOption = Annotated[
    str | None, typer.Option(help="Run only shard i/n of the parts (e.g. 0/4).")
]
DryRunOption = Annotated[
    bool, typer.Option(help="Print the plan (prompts, passes, output size) and stop.")
]
WriteSpecOption = Annotated[
    Path | None, typer.Option(help="Write the run spec (TOML) this would run, and stop.")
]
PartSizeOption = Annotated[int, typer.Option(help="Prompts per stored part (the unit of resume).")]


def _execute(spec, *, shard: str | None, dry_run: bool, write_spec: Path | None) -> Path | None:
    from hooklab.runs import is_finished, parse_shard, plan_run, run_spec

    if write_spec is not None:  # absolute paths: the file is read relative to its own folder
        write_spec.write_text(spec.absolute().to_toml())
        typer.echo(f"wrote {write_spec}; run it with: hooklab run {write_spec}")
        return None
    plan = plan_run(spec)  # refuses a bad spec before any model loads
    if dry_run:
        typer.echo(plan.describe())
        return None
    if is_finished(spec):  # the same run (plan_run refuses another), already merged
        typer.echo(
            f"kept {plan.spec.out}: it already holds this finished run, nothing to do (pass "
            "another --out to run it again)."
        )
        return None
    path = run_spec(spec, shard=None if shard is None else parse_shard(shard))
    if path is None:
        typer.echo(f"shard done; when every shard has finished: hooklab merge {spec.out}")
    return path


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Run spec (TOML).")],
    out: Annotated[Path | None, typer.Option(help="Override the spec's out folder.")] = None,
    shard: ShardOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Run a spec: resumable (rerun it after an interruption), shardable, local or on Ray."""
    from hooklab.runs import load_spec

    loaded = load_spec(spec, out=None if out is None else str(out))
    path = _execute(loaded, shard=shard, dry_run=dry_run, write_spec=None)
    if path is not None:
        for line in loaded.kind.headline(path.parent):
            typer.echo(line)


@app.command()
def merge(folder: Annotated[Path, typer.Argument(help="A run's out folder.")]) -> None:
    """Build the final table, manifest and summaries from a run's finished parts."""
    from hooklab.runs import merge_run

    typer.echo(f"wrote {merge_run(folder)}")


@app.command()
def info(folder: Annotated[Path, typer.Argument(help="A run's out folder.")]) -> None:
    """Print a run's provenance: versions, models, prompts, config, parts, hosts."""
    from hooklab.runs import run_info

    typer.echo(run_info(folder))


@app.command("train-lens")
def train_lens(
    out: Annotated[Path, typer.Option(help="Folder for the lenses (OUT/pt, OUT/it).")],
    corpus: Annotated[
        Path, typer.Option(help="Text file, one document per line (or JSONL with 'text').")
    ],
    pair: PairOption = None,
    pt: PtOption = None,
    it: ItOption = None,
    token_budget: Annotated[int, typer.Option(help="Training tokens per lens.")] = 250_000,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam or sgd (Nesterov).")] = "adam",
    seed: Annotated[int, typer.Option(help="Shuffling seed.")] = 0,
    pt_revision: PtRevision = None,
    it_revision: ItRevision = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Train a tuned lens per side of a pair (separately); use them with --lens tuned:OUT."""
    from hooklab.lens import TunedLensTrainConfig, train_tuned_lens

    texts = _read_corpus(corpus)
    config = TunedLensTrainConfig(
        token_budget=token_budget,
        seq_len=seq_len,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,  # type: ignore[arg-type]  # checked by the config
        seed=seed,
    )
    loaded = _load_pair_from_options(
        pair, pt, it, pt_revision, it_revision, dtype, device, trust_remote_code
    )
    sources = {"pt": loaded.pt_source, "it": loaded.it_source}
    report = {}
    for side, model in loaded.models().items():
        lens, result = train_tuned_lens(
            model,
            texts,
            config=config,
            name_or_path=sources[side].name_or_path,
            revision=sources[side].commit or sources[side].revision,
            label=f"tuned lens, {side}",
        )
        lens.save(out / side)
        report[side] = result.to_dict()
        before = sum(result.held_out_kl_before) / max(len(result.held_out_kl_before) - 1, 1)
        after = sum(result.held_out_kl_after) / max(len(result.held_out_kl_after) - 1, 1)
        typer.echo(
            f"{side}: held-out KL(final || layer), mean over layers: {before:.4f} -> "
            f"{after:.4f} nats ({result.tokens_seen} tokens)"
        )
    (out / "training.json").write_text(json.dumps(report, indent=2))


def _read_corpus(path: Path) -> list[str]:
    if not path.is_file():
        raise HooklabError(f"corpus={str(path)!r}: no such file; pass a text or JSONL file.")
    from hooklab.jsonl import read_jsonl

    if path.suffix != ".jsonl":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise HooklabError(
                f"corpus={str(path)!r}: not UTF-8 text ({error.reason}); save it as UTF-8."
            ) from None
        return [line for line in text.split("\n") if line.strip()]
    texts = []
    for number, record in read_jsonl(path):
        document = record.get("text") if isinstance(record, dict) else None
        if not isinstance(document, str):
            raise HooklabError(
                f"corpus={str(path)!r}, line {number}: expected an object with a string "
                "'text'; fix the line or pass a plain text file (one document per line)."
            )
        texts.append(document)
    return texts


@app.command()
def families() -> None:
    """List the supported families and the paper pairs."""
    from hooklab.architectures import _SPECS
    from hooklab.catalog import paper_pairs

    typer.echo(f"{'family':<12} {'MLP path':<31} Hugging Face architectures")
    for spec in _SPECS:
        typer.echo(
            f"{spec.family:<12} {' -> '.join(spec.mlp_path):<31} {', '.join(spec.hf_architectures)}"
        )
    typer.echo(f"\n{'pair':<17} {'PT':<32} {'IT':<36} {'params':>7} {'pair bf16':>9}")
    for name, entry in paper_pairs().items():
        billions = entry.n_params_language_model / 1e9
        typer.echo(
            f"{name:<17} {entry.pt:<32} {entry.it:<36} {billions:>6.2f}B "
            f"{2 * 2 * billions:>7.1f} GB"
        )


study_app = typer.Typer(
    help="Several experiments on several pairs as one study (the paper).", rich_markup_mode=None
)
app.add_typer(study_app, name="study")
StudyOption = Annotated[Path, typer.Argument(help="Study spec (TOML with a [study] table).")]
StudyOut = Annotated[Path | None, typer.Option(help="Override the study's out folder.")]


@study_app.command("run")
def study_run(
    spec: StudyOption,
    out: StudyOut = None,
    pair_reports: Annotated[bool, typer.Option(help="Also write each pair's report.")] = True,
) -> None:
    """Run (or resume) every pair x experiment, then tables, figures, claims and report."""
    from hooklab.study import load_study, run_study

    study = load_study(spec, out=None if out is None else str(out))
    for run in run_study(study, study_file=spec, pair_reports=pair_reports):
        typer.echo(f"{run.label:<18} {run.experiment:<10} {'kept' if run.skipped else 'ran'}")
    typer.echo(f"claims: {study.out_dir / 'claims.csv'}\nreport: {study.out_dir / 'report.html'}")


@study_app.command("plan")
def study_plan(
    spec: StudyOption,
    n_prompts: Annotated[
        int | None, typer.Option(help="Price this many prompts instead of the prompt set's.")
    ] = None,
    measured: Annotated[
        bool,
        typer.Option(
            help="Also set each finished run's measured seconds beside its estimate, with "
            "the utilisation they imply (calibration)."
        ),
    ] = False,
    out: StudyOut = None,
) -> None:
    """Print each run's forward passes, tokens, rows, disk, GPU memory and GPU-hours."""
    from hooklab.study import (
        CostModel,
        calibrate,
        format_calibration,
        format_plan,
        load_study,
        plan_study,
    )

    study = load_study(spec, out=None if out is None else str(out))
    cost = CostModel.from_dict(study.cost)
    typer.echo(format_plan(plan_study(study, n_prompts=n_prompts, cost=cost), cost))
    if measured:
        typer.echo("\n" + format_calibration(calibrate(study, cost), cost))


@study_app.command("report")
def study_report(spec: StudyOption, out: StudyOut = None) -> None:
    """Rewrite the study's tables, figures, claims and report from its finished runs."""
    from hooklab.study import load_study, write_study_outputs

    study = load_study(spec, out=None if out is None else str(out))
    typer.echo(f"wrote {write_study_outputs(study)}")


def _run_experiment(spec: Any, options: dict[str, Any]) -> None:
    path = _execute(
        spec, shard=options["shard"], dry_run=options["dry_run"], write_spec=options["write_spec"]
    )
    if path is not None:
        for line in spec.kind.headline(path.parent):
            typer.echo(line)


def _register_experiments() -> None:
    """One generated command per registered experiment (``hooklab readout``, ...)."""
    from hooklab.cli_config import experiment_command
    from hooklab.experiment import registered_experiments

    present = {info.name for info in app.registered_commands}
    for name, experiment in registered_experiments().items():
        if name not in present:
            app.command(name, help=experiment.summary)(
                experiment_command(experiment, _run_experiment)
            )


_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit with status 2; an interrupted run
    exits with 130 and says how to resume."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-file bars drown the report
    try:
        _register_experiments()
        # typer turns Ctrl-C into exit code 130, returned (not raised) when not standalone
        status = app(args=argv, standalone_mode=False)
        if status == _INTERRUPTED:
            raise KeyboardInterrupt
    except HooklabError as error:
        typer.echo(f"hooklab: error: {error}", err=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo(
            "hooklab: interrupted; rerun the same command to resume (finished parts are kept).",
            err=True,
        )
        return _INTERRUPTED
    except typer.Exit as exit_:
        return exit_.exit_code
    except Exception as error:  # click's usage errors
        if hasattr(error, "show") and hasattr(error, "exit_code"):
            error.show()
            return error.exit_code
        if isinstance(error, OSError):
            return _os_error(error)
        raise
    return status if isinstance(status, int) else 0


def _os_error(error: OSError) -> int:
    where = f" ({error.filename})" if error.filename else ""
    typer.echo(f"hooklab: error: {error.strerror or error}{where}.", err=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
