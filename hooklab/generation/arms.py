"""Arms of a behavioural comparison: which model generates, under which intervention, prompted how.

An arm is written as a short string (:data:`ARM_GRAMMAR`)::

    pt                  PT as it is
    it                  IT as it is
    pt+late:it          PT with IT's MLP path grafted into the late third of its layers
    pt+late:random      PT with the norm-matched random control of that graft
    it+late:pt          IT with PT's late MLPs (the swap)
    it-skip:3           IT without its final 3 blocks (block output = block input)
    it-skipmlp:3        IT without the MLPs of its final 3 blocks
    pt+0:4:it@raw       layers 0..3 grafted; the prompt given raw instead of templated

Prompting: every arm is prompted with the IT chat template unless it says ``@raw``, so that
the arms of one comparison (e.g. PT, PT + IT's late MLPs, IT) answer exactly the same prompt
tokens; the choice is recorded in :meth:`Arm.to_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hooklab.errors import HooklabError
from hooklab.forward import HookFn
from hooklab.generation.decode import GenerationOutput, generate
from hooklab.generation.interventions import (
    module_graft_hooks,
    random_control_hooks,
    skip_layer_hooks,
    skip_mlp_hooks,
)
from hooklab.graft.windows import parse_windows
from hooklab.prompts import Prompt, chat_prompt_ids, raw_prompt_ids, stop_token_ids

__all__ = [
    "Arm",
    "parse_arm",
    "arm_hooks",
    "arm_prompt_ids",
    "generate_arm",
    "ARM_GRAMMAR",
    "DEFAULT_ARMS",
]

ARM_GRAMMAR = (
    "HOST, HOST+WINDOW:DONOR, HOST-skip:K or HOST-skipmlp:K, optionally followed by @template "
    "(the default: the IT chat template) or @raw; HOST is pt or it, DONOR is pt, it or random "
    "(the norm-matched random control of grafting the other model), WINDOW is early, mid, "
    "late, last25, all or a:b (layers a..b-1), K is the number of final layers skipped "
    "(e.g. pt, pt+late:it, pt+late:random, it-skip:3, it-skipmlp:3, pt+0:4:it@raw)"
)

DEFAULT_ARMS = ("pt", "pt+late:it", "pt+late:random", "it", "it+late:pt", "it+late:random")

SIDES = ("pt", "it")
PROMPTINGS = ("template", "raw")


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison.

    Attributes:
        text: the arm as written (canonical form, prompting suffix included).
        host: ``"pt"`` or ``"it"``, the model that generates.
        intervention: ``"none"``, ``"graft"`` (donor's MLP path), ``"random"`` (norm-matched
            control of the graft from ``donor``), ``"skip"`` (whole blocks) or ``"skipmlp"``.
        layers: the layers the intervention touches (empty for ``"none"``).
        window: the window name of a graft (``"late"``, ``"0:4"``), else ``None``.
        donor: the model whose MLP path is grafted (or whose graft the control matches).
        prompting: ``"template"`` (IT chat template) or ``"raw"`` (the raw prompt, BOS only).
    """

    text: str
    host: Literal["pt", "it"]
    intervention: Literal["none", "graft", "random", "skip", "skipmlp"]
    layers: tuple[int, ...] = ()
    window: str | None = None
    donor: Literal["pt", "it"] | None = None
    prompting: Literal["template", "raw"] = "template"

    def to_dict(self) -> dict[str, Any]:
        """What a manifest or table records about the arm."""
        return {
            "arm": self.text,
            "host": self.host,
            "intervention": self.intervention,
            "layers": list(self.layers),
            "window": self.window,
            "donor": self.donor,
            "prompting": self.prompting,
            **({"random_norm": "own_pass"} if self.intervention == "random" else {}),
        }


def _error(text: str, detail: str) -> HooklabError:
    return HooklabError(f"arm {text!r}: {detail}. Accepted: {ARM_GRAMMAR}.")


def _side(text: str, value: str, what: str, allowed: tuple[str, ...] = SIDES) -> str:
    if value not in allowed:
        raise _error(text, f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_arm(text: str, n_layers: int) -> Arm:
    """The :class:`Arm` written as ``text`` (see :data:`ARM_GRAMMAR`) for an ``n_layers`` model.

    >>> parse_arm("pt+late:it", 6).layers
    (4, 5)
    """
    if not isinstance(text, str) or not text.strip():
        raise _error(str(text), "empty")
    body, _, prompting = text.strip().partition("@")
    prompting = _side(text, prompting or "template", "prompting", PROMPTINGS)
    suffix = "" if prompting == "template" else "@raw"
    if "+" in body:
        host, _, rest = body.partition("+")
        window_text, _, donor = rest.rpartition(":")
        host = _side(text, host, "host")
        donor = _side(text, donor, "donor", (*SIDES, "random"))
        if not window_text or "," in window_text or window_text.startswith("sliding"):
            raise _error(text, f"window {window_text!r} must be a single window")
        try:
            (window,) = parse_windows(window_text, n_layers)
        except HooklabError as error:
            raise _error(text, str(error).rstrip(".")) from None
        other = "it" if host == "pt" else "pt"
        return Arm(
            text=f"{host}+{window.name}:{donor}{suffix}",
            host=host,  # type: ignore[arg-type]
            intervention="random" if donor == "random" else "graft",
            layers=window.layers,
            window=window.name,
            donor=other if donor == "random" else donor,  # type: ignore[arg-type]
            prompting=prompting,  # type: ignore[arg-type]
        )
    for kind in ("skipmlp", "skip"):
        host, marker, count = body.partition(f"-{kind}:")
        if marker:
            host = _side(text, host, "host")
            if not count.isdigit() or not 0 <= int(count) <= n_layers:
                raise _error(text, f"K={count!r} must be an integer in 0..{n_layers}")
            k = int(count)
            return Arm(
                text=f"{host}-{kind}:{k}{suffix}",
                host=host,  # type: ignore[arg-type]
                intervention=kind,  # type: ignore[arg-type]
                layers=tuple(range(n_layers - k, n_layers)),
                prompting=prompting,  # type: ignore[arg-type]
            )
    host = _side(text, body, "host")
    return Arm(text=f"{host}{suffix}", host=host, intervention="none", prompting=prompting)  # type: ignore[arg-type]


def arm_hooks(pair: Any, arm: Arm | str, *, seed: int = 0) -> tuple[Any, list[HookFn]]:
    """The generating model of ``arm`` and the hooks that apply its intervention.

    Args:
        pair: a :class:`~hooklab.pair.ModelPair`.
        arm: an :class:`Arm` or its text.
        seed: seed of the random control.

    Returns:
        ``(host_model, hooks)``, to pass to :func:`~hooklab.generation.decode.generate`.
    """
    if isinstance(arm, str):
        arm = parse_arm(arm, pair.n_layers)
    models = {"pt": pair.pt, "it": pair.it}
    host = models[arm.host]
    if arm.intervention == "none":
        return host, []
    if arm.intervention == "graft":
        assert arm.donor is not None
        return host, module_graft_hooks(host, models[arm.donor], arm.layers)
    if arm.intervention == "random":
        assert arm.donor is not None
        # the own_pass norm-matched control (hooklab.graft.engine.RANDOM_NORM_SOURCES)
        return host, random_control_hooks(host, models[arm.donor], arm.layers, seed=seed)
    if arm.intervention == "skip":
        return host, skip_layer_hooks(host, arm.layers)
    return host, skip_mlp_hooks(host, arm.layers)


def arm_prompt_ids(pair: Any, arm: Arm | str, text: str) -> list[int]:
    """The prompt tokens ``arm`` sees for the user text ``text`` (template or raw)."""
    if isinstance(arm, str):
        arm = parse_arm(arm, pair.n_layers)
    if arm.prompting == "raw":
        return raw_prompt_ids(pair.tokenizer, text)
    return chat_prompt_ids(pair.tokenizer, text)


def generate_arm(
    pair: Any,
    arm: Arm | str,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    seed: int = 0,
    **options: Any,
) -> list[GenerationOutput]:
    """Each prompt's response under ``arm``, keyed by prompt id.

    Stops at EOS or an end-of-turn marker (:func:`~hooklab.prompts.stop_token_ids`); pads with
    the tokenizer's pad token (else the first stop token). ``seed`` seeds both the random
    control and sampling; ``options`` go to :func:`~hooklab.generation.decode.generate`
    (``greedy``, ``temperature``, ``top_p``, ``batch_size``, ``use_cache``...).
    """
    if isinstance(arm, str):
        arm = parse_arm(arm, pair.n_layers)
    host, hooks = arm_hooks(pair, arm, seed=seed)
    stops = stop_token_ids(pair.tokenizer)
    pad = pair.tokenizer.pad_token_id
    return generate(
        host,
        [arm_prompt_ids(pair, arm, p.text) for p in prompts],
        hooks=hooks,
        max_new_tokens=max_new_tokens,
        stop_ids=stops,
        pad_id=int(pad if pad is not None else stops[0]),
        seed=seed,
        keys=[p.id for p in prompts],
        **options,
    )
