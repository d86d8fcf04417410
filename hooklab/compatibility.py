"""Can two checkpoints be compared as a pair? Checked on configs and tokenizers, before weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hooklab.architectures import hf_text_config, spec_for_config
from hooklab.errors import PairMismatchError

__all__ = ["PROBE_TEXTS", "CompatibilityCheck", "CompatibilityReport", "check_compatibility"]

PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "def square(x):\n    return x ** 2  # 3.14159",
    "User: what is 12 * 7? Assistant: 84.",
    "Ünïcödé — émigré, naïve; 中文 and 🙂 emoji.",
)


@dataclass(frozen=True)
class CompatibilityCheck:
    """One compared property: its name and the PT and IT values."""

    what: str
    pt: Any
    it: Any

    @property
    def ok(self) -> bool:
        return self.pt == self.it


@dataclass(frozen=True)
class CompatibilityReport:
    """All checks of a pair, in order."""

    checks: tuple[CompatibilityCheck, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def differences(self) -> list[tuple[str, Any, Any]]:
        return [(c.what, c.pt, c.it) for c in self.checks if not c.ok]

    def raise_if_incompatible(self, pt_name: str, it_name: str) -> None:
        """Raise :class:`PairMismatchError` naming every difference and both values."""
        if self.ok:
            return
        lines = [f"  {what}: pt={pt!r}  it={it!r}" for what, pt, it in self.differences]
        raise PairMismatchError(
            f"pt={pt_name!r} and it={it_name!r} cannot be compared as a pair:\n"
            + "\n".join(lines)
            + "\nA PT/IT pair must share architecture, layer count, d_model, vocabulary and "
            "tokenizer; check that both ids name the same model family and size.",
            self.differences,
        )

    def format(self) -> str:
        """A plain-text table of the checks."""
        rows = [f"{'check':<34} {'pt':<28} {'it':<28} ok"]
        for c in self.checks:
            rows.append(
                f"{c.what:<34} {_short(c.pt):<28} {_short(c.it):<28} {'yes' if c.ok else 'NO'}"
            )
        return "\n".join(rows)


def _short(value: Any, width: int = 28) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _tokenization_check(
    index: int, text: str, pt_tokenizer: Any, it_tokenizer: Any
) -> CompatibilityCheck:
    pt_ids = list(pt_tokenizer(text, add_special_tokens=False)["input_ids"])
    it_ids = list(it_tokenizer(text, add_special_tokens=False)["input_ids"])
    if pt_ids == it_ids:
        return CompatibilityCheck(f"tokenization of probe {index}", len(pt_ids), len(it_ids))
    first = next(
        (i for i, (a, b) in enumerate(zip(pt_ids, it_ids, strict=False)) if a != b),
        min(len(pt_ids), len(it_ids)),
    )
    return CompatibilityCheck(
        f"tokenization of probe {index} {text[:12]!r}",
        f"{len(pt_ids)} tokens, [{first}]={pt_ids[first] if first < len(pt_ids) else None}",
        f"{len(it_ids)} tokens, [{first}]={it_ids[first] if first < len(it_ids) else None}",
    )


def check_compatibility(
    pt_config: Any, it_config: Any, pt_tokenizer: Any, it_tokenizer: Any
) -> CompatibilityReport:
    """Compare family, layer count, d_model, vocabulary size and probe tokenizations."""
    pt_spec, it_spec = spec_for_config(pt_config), spec_for_config(it_config)
    pt_text, it_text = hf_text_config(pt_config), hf_text_config(it_config)
    checks = [
        CompatibilityCheck(
            "architecture",
            f"{pt_spec.family} ({pt_config.architectures[0]})"
            if pt_spec != it_spec
            else pt_spec.family,
            f"{it_spec.family} ({it_config.architectures[0]})"
            if pt_spec != it_spec
            else it_spec.family,
        ),
        CompatibilityCheck("layer count", pt_text.num_hidden_layers, it_text.num_hidden_layers),
        CompatibilityCheck("d_model", pt_text.hidden_size, it_text.hidden_size),
        CompatibilityCheck("vocabulary size", pt_text.vocab_size, it_text.vocab_size),
    ]
    checks += [
        _tokenization_check(i, text, pt_tokenizer, it_tokenizer)
        for i, text in enumerate(PROBE_TEXTS)
    ]
    return CompatibilityReport(tuple(checks))
