"""The ``hooklab`` command line. Each subcommand is a thin shell over a library call."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from hooklab.errors import HooklabError

app = typer.Typer(
    name="hooklab",
    help="Model diffing of pretrained / instruction-tuned pairs on TransformerLens bridges.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COLUMNS = (
    ("softcap", 7),
    ("hf_logits", 10),
    ("resid_identity", 14),
    ("readout", 9),
    ("mlp_path", 9),
)


def _pair_parity(pair, hf_sources: dict[str, str] | None) -> list[dict]:
    from hooklab.parity import check_parity, probe_tokens

    tokens = probe_tokens(pair.tokenizer, pair.device)
    rows = []
    for side, model in pair.models().items():
        source = None if hf_sources is None else hf_sources[side]
        report = check_parity(model, tokens, hf_source=source)
        rows.append({"side": side, **report.to_dict(), "ok": report.passed()})
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
        lines.append(f"{name:<18} {row['side']:<4} {cells}  {'yes' if row['ok'] else 'NO'}")
    return "\n".join(lines)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Folder for parity.json (default: print only).")
    ] = None,
) -> None:
    """Build tiny PT/IT pairs of all six families offline; print compatibility and parity."""
    from hooklab.pair import load_pair
    from hooklab.synthetic import TINY_SHAPES, write_tiny_pair

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hooklab-demo-") as root:
        for i, shape in enumerate(TINY_SHAPES):
            tiny = write_tiny_pair(shape, root)
            pair = load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
            if i == 0:
                typer.echo(f"Compatibility of the tiny {shape} pair ({pair!r}):")
                typer.echo(pair.compatibility.format() + "\n")
            for row in _pair_parity(pair, {"pt": str(tiny.pt), "it": str(tiny.it)}):
                rows.append({"shape": shape, **row})
    typer.echo("Parity (max |difference|; hf logits: bridge vs Hugging Face eager):")
    typer.echo(_format_parity(rows))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity.json").write_text(json.dumps(rows, indent=2))
        typer.echo(f"\nwrote {out / 'parity.json'}")


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
    typer.echo(_format_parity(_pair_parity(loaded, sources if hf_parity else None)))


@app.command()
def families() -> None:
    """List the supported families and the paper pairs."""
    from hooklab.architectures import _SPECS
    from hooklab.catalog import paper_pairs

    for spec in _SPECS:
        typer.echo(
            f"{spec.family:<12} mlp path {' -> '.join(spec.mlp_path):<22} "
            f"{', '.join(spec.hf_architectures)}"
        )
    typer.echo("")
    for name, entry in paper_pairs().items():
        typer.echo(f"{name:<17} {entry.pt:<32} {entry.it}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit with status 2."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-file bars drown the report
    try:
        app(args=argv, standalone_mode=False)
    except HooklabError as error:
        typer.echo(f"hooklab: error: {error}", err=True)
        return 2
    except typer.Exit as exit_:
        return exit_.exit_code
    except Exception as error:  # click's usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            return error.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
