"""The fused readout path equals the reference path: every metric, bf16 inputs, fp32 sums.

The fused functions run eagerly here (torch.compile on a 2-core CPU takes longer to compile
than the suite allows; benchmarks/gpu_suite.py compiles them and checks them again on the
device). Tolerances are float32's: the two paths sum the same terms in another order.
"""

from __future__ import annotations

import os

import pytest
import torch

import hooklab
import hooklab.stream as stream
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.fused_readout import (
    BACKENDS,
    READOUT_ENV,
    choose_backend,
    fused_final_distribution,
    fused_layer_metrics,
)
from hooklab.metrics import Workspace, final_distribution, layer_metrics
from tests.test_stream import _batch

ATOL, RTOL = 2e-5, 1e-5


def _assert_same(ours: dict, reference: dict, label: object) -> None:
    assert set(ours) == set(reference), label
    for name, value in reference.items():
        got = ours[name]
        if value.dtype.is_floating_point:
            assert torch.allclose(
                got.double(), value.double(), atol=ATOL, rtol=RTOL, equal_nan=True
            ), (label, name, float((got.double() - value.double()).abs().max()))
        else:
            assert torch.equal(got.to(value.dtype), value), (label, name)


@pytest.mark.parametrize("vocab", [7, 3000])
def test_fused_layer_metrics_equal_the_reference(vocab):
    generator = torch.Generator().manual_seed(vocab)
    n = 9
    final = (torch.randn(n, vocab, generator=generator) * 3).bfloat16()
    layer = (final.float() + torch.randn(n, vocab, generator=generator) * 2).bfloat16()
    other = (final.float() + torch.randn(n, vocab, generator=generator)).bfloat16()
    layer[0] = final[0]  # a row identical to the final: KL 0, rank 0, agreement
    teacher = torch.log_softmax(torch.randn(n, vocab, generator=generator), -1)
    targets = torch.randint(0, vocab, (n,), generator=generator)
    extra = ["js_to_final"]
    ref_finals = [final_distribution(f.float()) for f in (final, other)]
    reference = layer_metrics(
        layer.float(), ref_finals, targets, teacher_logprobs=teacher, extra=extra
    )
    fused_finals = [fused_final_distribution(f, compiled=False) for f in (final, other)]
    for ours_final, ref_final in zip(fused_finals, ref_finals, strict=True):
        assert torch.equal(ours_final.top1, ref_final.top1)
        assert torch.allclose(ours_final.logprobs, ref_final.logprobs, atol=ATOL)
    ours = fused_layer_metrics(  # bf16 logits straight in
        layer, fused_finals, targets, teacher_logprobs=teacher, extra=extra, compiled=False
    )
    for index, (got, want) in enumerate(zip(ours, reference, strict=True)):
        _assert_same(got, want, index)
    # without targets or teacher, only what needs nothing
    bare = fused_layer_metrics(layer, fused_finals[:1], compiled=False)[0]
    assert "target_rank" not in bare and "kl_to_teacher" not in bare
    own = fused_layer_metrics(final, fused_finals[:1], own_final=True, compiled=False)[0]
    assert (own["kl_to_final"] == 0).all() and (own["kl_final_to_layer"] == 0).all()
    assert own["top1_agree"].all() and (own["final_top1_rank"] == 0).all()


def test_fused_final_distribution_fills_the_workspace_slot():
    logits = torch.randn(5, 40)
    workspace = Workspace(8, 40, n_finals=2)
    final = fused_final_distribution(logits, workspace, slot=1, offset=3, compiled=False)
    assert final.logprobs.data_ptr() == workspace.finals[1][0][3:].data_ptr()
    assert torch.allclose(final.probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fused_readout_equals_the_reference_readout(tiny_pair, dtype):
    """The whole streaming readout on either path: targets, a teacher, an opt-in metric and a
    variant sharing early layers, as tests/test_stream.py exercises the reference path."""
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu", dtype=dtype)
    tokens, mask, targets = _batch()
    with torch.no_grad():
        base = residual_stream(pair.it, tokens, attention_mask=mask).resid_post
        teacher = residual_stream(pair.pt, tokens, attention_mask=mask).resid_post[-1]
    variant = base.clone()
    variant[2:] += 0.3 * torch.randn_like(variant[2:])
    read = mask.bool()

    def readouts(backend: str):
        return stream.read_variants(
            pair.it,
            base,
            [(2, variant)],
            read,
            targets=targets,
            teacher=(pair.pt, teacher),
            chunk_rows=7,
            metrics=["js_to_final"],
            backend=backend,
        )

    reference, fused = readouts("reference"), readouts("fused")
    for source, (ours, want) in enumerate(zip(fused, reference, strict=True)):
        assert torch.equal(ours.final_top1, want.final_top1)
        assert torch.equal(ours.read, want.read)
        _assert_same(ours.metrics, want.metrics, source)
        assert (ours.metrics["kl_to_final"][..., -1][read] == 0).all()
        assert (ours.metrics["final_top1_rank"][..., -1][read] == 0).all()


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(READOUT_ENV, raising=False)
    assert choose_backend("cpu").name == "reference"  # never fused on the CPU by default
    assert choose_backend(torch.device("cuda", 0)).name == "fused"
    assert choose_backend("cuda", "reference").name == "reference"
    monkeypatch.setenv(READOUT_ENV, "reference")
    assert choose_backend("cuda").name == "reference"
    monkeypatch.setenv(READOUT_ENV, "fused")
    assert choose_backend("cpu").name == "fused"
    with pytest.raises(HooklabError, match="choose one of"):
        choose_backend("cpu", "triton")
    assert set(BACKENDS) == {"reference", "fused"}


def test_a_kernel_whose_compilation_fails_runs_uncompiled_with_a_warning():
    from hooklab.fused_readout import _Compiled

    def double(x):
        return 2 * x

    kernel = _Compiled(double)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    kernel.compiled = broken
    with pytest.warns(RuntimeWarning, match="double failed.*no C\\+\\+ compiler"):
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))
    assert kernel.compiled is None
    assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))  # no second warning


@pytest.mark.skipif(
    os.environ.get("HOOKLAB_TEST_COMPILE") != "1",
    reason="compiling takes ~30 s on a small CPU: HOOKLAB_TEST_COMPILE=1 runs it",
)
def test_the_compiled_kernels_equal_the_reference():
    generator = torch.Generator().manual_seed(0)
    for n in (5, 9):  # two row counts: one dynamic-shape graph serves both
        final = (torch.randn(n, 3000, generator=generator) * 3).bfloat16()
        layer = (final.float() + torch.randn(n, 3000, generator=generator) * 2).bfloat16()
        targets = torch.randint(0, 3000, (n,), generator=generator)
        teacher = torch.log_softmax(torch.randn(n, 3000, generator=generator), -1)
        reference = layer_metrics(
            layer.float(), [final_distribution(final.float())], targets, teacher_logprobs=teacher
        )[0]
        compiled = fused_final_distribution(final, compiled=True)
        ours = fused_layer_metrics(
            layer, [compiled], targets, teacher_logprobs=teacher, compiled=True
        )[0]
        _assert_same(ours, reference, n)
