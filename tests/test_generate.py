"""Generation under interventions: the KV cache, batching, grafts, skips and arms, each against
an identity or a brute-force reference (Hugging Face's own generate, HF models with blocks
removed)."""

from __future__ import annotations

import pytest
import torch
import transformers

import hooklab
from hooklab import hooks
from hooklab.errors import HooklabError
from hooklab.generation import (
    DEFAULT_ARMS,
    arm_prompt_ids,
    current_step,
    generate,
    generate_arm,
    module_graft_hooks,
    parse_arm,
    position_directions,
    random_control_hooks,
    skip_last,
    skip_layer_hooks,
    skip_mlp_hooks,
    step_context,
)
from hooklab.prompts import Prompt, greedy_continuations
from hooklab.synthetic import write_mlp_swapped_checkpoint

pytestmark = pytest.mark.canary  # .ci/run runs these against the newest releases too

PAD = 2


def _prompts(n: int = 3, seed: int = 4) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = [5, 9, 3, 7, 4][:n]
    return [[0, *torch.randint(5, 500, (k,), generator=generator).tolist()] for k in lengths]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    made = {}

    def make(shape):
        if shape not in made:
            tiny = tiny_pair(shape)
            made[shape] = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
        return made[shape]

    return make


@pytest.fixture(scope="module")
def hybrid(tiny_pair, tiny_root):
    """shape -> (pair of PT and PT-with-IT's-MLP-weights, the hybrid's folder)."""
    made = {}

    def make(shape):
        if shape not in made:
            tiny = tiny_pair(shape)
            folder = tiny_root / shape / "generate-mlp-swapped"
            b = write_mlp_swapped_checkpoint(tiny.pt, tiny.it, folder)
            made[shape] = hooklab.load_pair(pt=tiny.pt, it=b, device="cpu")
        return made[shape]

    return make


def _run(model, hook_list=(), **options):
    defaults = dict(max_new_tokens=6, stop_ids=[], pad_id=PAD, return_logits=True, batch_size=3)
    return generate(
        model, options.pop("prompts", _prompts()), hooks=hook_list, **defaults | options
    )


def _tokens(outputs):
    return [o.token_ids for o in outputs]


def _assert_same(a, b, atol=1e-5):
    assert _tokens(a) == _tokens(b)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x.logits, y.logits, atol=atol, rtol=0), (
            (x.logits - y.logits).abs().max()
        )


@pytest.mark.parametrize("shape", ["llama", "gemma3", "deepseek_v2"])
def test_cached_equals_uncached_under_graft_and_random_control(pair, shape):
    p = pair(shape)
    plain = _run(p.pt)
    for name, build in (
        ("graft", lambda: module_graft_hooks(p.pt, p.it, [2, 3])),
        ("random", lambda: random_control_hooks(p.pt, p.it, [2, 3], seed=1)),
    ):
        cached = _run(p.pt, build(), use_cache=True)
        uncached = _run(p.pt, build(), use_cache=False)
        _assert_same(cached, uncached)
        assert all(o.n_tokens == 6 and o.stop_reason == "length" for o in cached), name
        # the intervention is live: it moves the logits of the same first step
        assert not torch.allclose(cached[0].logits[0], plain[0].logits[0], atol=1e-4), name


@pytest.mark.parametrize("greedy", [True, False])
def test_batched_equals_one_by_one_whatever_the_order(pair, greedy):
    p = pair("llama")
    prompts, keys = _prompts(4), ["a", "b", "c", "d"]
    options = dict(greedy=greedy, temperature=1.5, top_p=0.9, seed=3, max_new_tokens=8)
    batched = _run(
        p.pt, random_control_hooks(p.pt, p.it, [1, 3]), prompts=prompts, keys=keys, **options
    )
    single = _run(
        p.pt,
        random_control_hooks(p.pt, p.it, [1, 3]),
        prompts=prompts[::-1],
        keys=keys[::-1],
        batch_size=1,
        **options,
    )[::-1]
    _assert_same(batched, single)
    if not greedy:  # the sampler really samples, and its seed matters
        greedy_tokens = _tokens(_run(p.pt, random_control_hooks(p.pt, p.it, [1, 3]), **options))
        assert _tokens(batched) != greedy_tokens
        other_seed = _run(p.pt, random_control_hooks(p.pt, p.it, [1, 3]), prompts=prompts,
                          keys=keys, **options | {"seed": 4})  # fmt: skip
        assert _tokens(other_seed) != _tokens(batched)


def test_plain_generation_equals_hugging_face_generate(pair):
    p = pair("gemma3")
    prompts = _prompts(4)
    ours = generate(p.it, prompts, max_new_tokens=7, stop_ids=[1, 7], pad_id=PAD, batch_size=4)
    reference = greedy_continuations(
        p.it, prompts, max_new_tokens=7, stop_ids=[1, 7], progress=False
    )
    assert [list(o.token_ids) for o in ours] == reference


@pytest.mark.parametrize("shape", ["llama", "gemma3", "deepseek_v2"])
def test_grafting_every_mlp_of_a_hybrid_generates_the_hybrids_tokens(hybrid, shape):
    p = hybrid(shape)
    expected = _run(p.it, max_new_tokens=8)
    grafted = _run(p.pt, module_graft_hooks(p.pt, p.it, range(p.n_layers)), max_new_tokens=8)
    _assert_same(grafted, expected)
    assert _tokens(_run(p.pt, max_new_tokens=8)) != _tokens(expected)  # not vacuous


def test_no_op_interventions_reproduce_the_host(pair):
    p = pair("gemma3")
    host = _run(p.pt)

    def observe(activation, hook):  # noqa: ARG001
        return None

    for hook_list in (
        skip_last(p.pt, 0),
        skip_last(p.pt, 0, mlp_only=True),
        [(hooks.resid_post(layer), observe) for layer in range(p.n_layers)],
        module_graft_hooks(p.pt, p.pt, range(p.n_layers)),
        random_control_hooks(p.pt, p.pt, range(p.n_layers)),  # zero norm: no move
    ):
        _assert_same(_run(p.pt, hook_list), host, atol=0)


def _hf_with(folder, layers, what):
    """The plain HF model with ``layers``' blocks (or their MLPs) replaced by identity / zero."""

    class Identity(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    class Zero(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return torch.zeros_like(hidden_states)

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    stacks = [m for name, m in model.named_modules() if name.endswith("layers")]
    (stack,) = [m for m in stacks if isinstance(m, torch.nn.ModuleList)]
    for layer in layers:
        if what == "block":
            stack[layer] = Identity()
        else:
            stack[layer].mlp = Zero()
    return model


@pytest.mark.parametrize("shape", ["llama", "gemma3", "deepseek_v2"])
@pytest.mark.parametrize("what", ["block", "mlp"])
def test_skipping_equals_hugging_face_with_those_blocks_removed(tiny_pair, pair, shape, what):
    p, folder, skipped = pair(shape), tiny_pair(shape).pt, [1, 2]
    builder = skip_layer_hooks if what == "block" else skip_mlp_hooks
    ours = _run(p.pt, builder(p.pt, skipped), max_new_tokens=1)
    reference = _hf_with(folder, skipped, what)
    plain = _run(p.pt, max_new_tokens=1)
    for prompt, out, base in zip(_prompts(), ours, plain, strict=True):
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(out.logits[0], expected, atol=1e-5, rtol=0)
        assert not torch.allclose(base.logits[0], expected, atol=1e-3)  # not vacuous


def test_skip_last_is_the_final_layers(pair):
    p = pair("llama")
    _assert_same(_run(p.pt, skip_last(p.pt, 2)), _run(p.pt, skip_layer_hooks(p.pt, [2, 3])), 0)
    _assert_same(
        _run(p.pt, skip_last(p.pt, 1, mlp_only=True)), _run(p.pt, skip_mlp_hooks(p.pt, [3])), 0
    )
    with pytest.raises(HooklabError, match="k=5"):
        skip_last(p.pt, 5)
    with pytest.raises(HooklabError, match="outside the model"):
        skip_layer_hooks(p.pt, [4])


def test_random_control_moves_each_token_by_the_graft_norm_at_its_absolute_position(pair):
    p = pair("llama")
    layer, seen = 2, {}

    def keep(name):
        def hook(activation, hook):  # noqa: ARG001
            seen[name] = activation.detach().clone()

        return hook

    prompt = _prompts(1)[0]
    padded = torch.tensor([[PAD, PAD, *prompt], [*prompt, 5, 6]])
    mask = torch.tensor([[0, 0] + [1] * len(prompt), [1] * (len(prompt) + 2)])
    positions = mask.cumsum(-1) - 1
    capture = [(hooks.resid_mid(layer), keep("mid")), (hooks.mlp_out(layer), keep("host"))]
    with torch.no_grad(), p.pt.hooks(fwd_hooks=capture):
        p.pt(padded, attention_mask=mask, position_ids=positions.clamp_min(0))
    control = random_control_hooks(p.pt, p.it, [layer], seed=9)
    with torch.no_grad(), step_context(positions, ["x", "x"]):
        with p.pt.hooks(fwd_hooks=[*control, (hooks.mlp_out(layer), keep("new"))]):
            p.pt(padded, attention_mask=mask, position_ids=positions.clamp_min(0))
    with torch.no_grad():
        norm = (hooklab.mlp_output(p.it, layer, seen["mid"]) - seen["host"]).norm(dim=-1)
    moved = seen["new"] - seen["host"]
    real = mask.bool()
    assert torch.allclose(moved.norm(dim=-1)[real], norm[real], rtol=1e-5, atol=1e-6)
    assert float(norm[real].min()) > 0
    # the same key and absolute position draw the same direction, padded or not
    n = len(prompt)
    assert torch.allclose(moved[0, 2:], moved[1, :n], atol=1e-5)
    directions = position_directions(["x"], positions[:1], 9, layer, p.d_model)
    assert torch.allclose(moved[0, 2:], directions[0, 2:] * norm[0, 2:, None], atol=1e-5)
    assert not torch.allclose(directions[0, 2], directions[0, 3])
    with pytest.raises(HooklabError, match="step_context"):
        current_step()


def test_stop_tokens_end_a_response_and_are_kept(pair):
    p = pair("llama")
    first = _run(p.pt, max_new_tokens=1)[0].token_ids[0]
    outputs = _run(p.pt, stop_ids=[first], max_new_tokens=10)
    assert outputs[0].token_ids == (first,) and outputs[0].stop_reason == "eot"
    for o in outputs:
        assert o.n_tokens == len(o.token_ids) == o.logits.shape[0]
        assert first not in o.token_ids[:-1]
        assert (o.stop_reason == "eot") == (o.token_ids[-1] == first)
        assert o.stop_reason == "eot" or o.n_tokens == 10


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(temperature=0.0), "temperature"),
        (dict(batch_size=0), "batch_size"),
        (dict(keys=["a", "a", "b"]), "unique"),
        (dict(keys=["a"]), "one key per prompt"),
        (dict(prompts=[[0], []]), "empty"),
    ],
)
def test_bad_generation_arguments_are_refused(pair, options, match):
    with pytest.raises(HooklabError, match=match):
        _run(pair("llama").pt, **options)


def test_parse_arm_grammar():
    arms = {text: parse_arm(text, 6) for text in DEFAULT_ARMS}
    assert [a.text for a in arms.values()] == list(DEFAULT_ARMS)
    graft, control = arms["pt+late:it"], arms["pt+late:random"]
    assert (graft.host, graft.intervention, graft.donor, graft.layers) == (
        "pt",
        "graft",
        "it",
        (4, 5),
    )
    assert (control.intervention, control.donor, control.layers) == ("random", "it", (4, 5))
    assert arms["it+late:random"].donor == "pt"
    assert parse_arm("it-skip:3", 6).layers == (3, 4, 5)
    assert parse_arm("it-skipmlp:0", 6).layers == ()
    raw = parse_arm("pt+0:4:it@raw", 6)
    assert (raw.window, raw.layers, raw.prompting, raw.text) == (
        "0:4",
        (0, 1, 2, 3),
        "raw",
        "pt+0:4:it@raw",
    )
    assert parse_arm("it", 6).to_dict() == {
        "arm": "it", "host": "it", "intervention": "none", "layers": [], "window": None,
        "donor": None, "prompting": "template",
    }  # fmt: skip
    for bad in ("xx", "pt+late:xx", "pt+0:9:it", "it-skip:7", "it-skip:x", "pt@chat",
                "pt+early,late:it", "pt+sliding:2:it", "", "pt+late"):  # fmt: skip
        with pytest.raises(HooklabError, match="Accepted"):
            parse_arm(bad, 6)


def test_arms_on_the_embedded_pair_share_prompts_and_self_graft_is_a_no_op():
    pair = hooklab.load_pair("tiny", device="cpu")
    text = "Name a colour."
    assert arm_prompt_ids(pair, "pt", text) == arm_prompt_ids(pair, "it+late:pt", text)
    assert arm_prompt_ids(pair, "pt@raw", text) == pair.tokenizer(text)["input_ids"]
    prompts = [Prompt("p1", text), Prompt("p2", "What is 2 + 2?")]
    plain = generate_arm(pair, "pt", prompts, max_new_tokens=5)
    assert [o.key for o in plain] == ["p1", "p2"]
    assert _tokens(generate_arm(pair, "pt+late:pt", prompts, max_new_tokens=5)) == _tokens(plain)
    assert _tokens(generate_arm(pair, "it-skip:0", prompts, max_new_tokens=5)) == _tokens(
        generate_arm(pair, "it", prompts, max_new_tokens=5)
    )


def test_the_two_named_random_norms_agree_at_the_first_window_layer_only():
    """own_pass (generation) and module_pass (teacher-forced grafts) norms, as docs/definitions
    section 8 states: equal at the window's first layer, different after it."""
    from hooklab import hooks
    from hooklab.architectures import mlp_output
    from hooklab.forward import residual_stream
    from hooklab.generation import step_context
    from hooklab.generation.interventions import random_control_hooks
    from hooklab.graft.engine import change_norm, module_change_norms
    from hooklab.prompts import chat_prompt_ids

    pair = hooklab.load_pair("tiny")
    host, donor = pair.pt, pair.it
    ids = chat_prompt_ids(pair.tokenizer, "Where is Paris?")
    tokens = torch.tensor([ids])
    module = module_change_norms(host, donor, tokens, [4, 5])
    seen = {}

    def keep(name):
        def hook(activation, hook):  # noqa: ARG001
            seen[name] = activation.detach().clone()

        return hook

    capture = [(hooks.resid_mid(layer), keep(f"mid{layer}")) for layer in (4, 5)]
    capture += [(hooks.mlp_out(layer), keep(f"out{layer}")) for layer in (4, 5)]  # before replace
    with step_context(torch.arange(len(ids)).unsqueeze(0), ["q"]):
        control = random_control_hooks(host, donor, [4, 5], seed=0)
        residual_stream(host, tokens, fwd_hooks=capture + control)
    own = {
        layer: change_norm(mlp_output(donor, layer, seen[f"mid{layer}"]), seen[f"out{layer}"])
        for layer in (4, 5)
    }
    assert torch.allclose(own[4], module[4], atol=1e-5)
    assert (own[5] - module[5]).abs().max() > 1e-2
