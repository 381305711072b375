import math

import pytest
import torch

from lmscope.train.optimizers import BatchedMuon, muon_lr_ratio, newton_schulz


def _pair(shapes, **kwargs):
    torch.manual_seed(0)
    theirs = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    return theirs, ours, torch.optim.Muon(theirs, **kwargs), BatchedMuon(ours, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"lr": 0.02}, {"lr": 0.05, "weight_decay": 0.0, "nesterov": False},
    {"lr": 0.01, "momentum": 0.9, "adjust_lr_fn": "match_rms_adamw", "ns_steps": 3}])
def test_batched_muon_steps_as_torchs_muon(kwargs):
    """Several matrices per shape, tall and wide and square, for 5 steps of fresh gradients:
    the same weights and momentum buffers as torch.optim.Muon's, to bfloat16 rounding."""
    shapes = [(48, 16), (16, 16), (64, 16), (16, 64), (48, 16), (16, 16), (64, 16), (16, 64),
              (8, 24)]
    theirs, ours, torch_muon, batched = _pair(shapes, **kwargs)
    for step in range(5):
        for a, b in zip(theirs, ours, strict=True):
            a.grad = torch.randn_like(a, generator=torch.Generator().manual_seed(step))
            b.grad = a.grad.clone()
        torch_muon.step()
        batched.step()
    for a, b in zip(theirs, ours, strict=True):
        # a step moves each weight by about lr: bfloat16 Newton-Schulz (3 significant digits)
        assert torch.allclose(a, b, rtol=0, atol=kwargs["lr"] * 2e-2)
        assert torch.allclose(torch_muon.state[a]["momentum_buffer"],
                              batched.state[b]["momentum_buffer"], atol=1e-6)
    assert batched.state_dict()["param_groups"] == torch_muon.state_dict()["param_groups"]


def test_newton_schulz_makes_each_matrix_nearly_orthogonal():
    """The iteration's fixed point: every singular value of each result near 1 (the quintic's
    coefficients leave them in about (0.5, 1.5), Muon's design), whatever the input's scale;
    each matrix of the stack on its own."""
    g = torch.randn(3, 16, 40) * torch.tensor([1e-3, 1.0, 1e3])[:, None, None]
    x = newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.5
    single = newton_schulz(g[1:2], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert torch.equal(single[0], newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)[1])


def test_muons_learning_rate_factor():
    assert muon_lr_ratio(None, (64, 16)) == 2.0 and muon_lr_ratio("original", (16, 64)) == 1.0
    assert muon_lr_ratio("match_rms_adamw", (16, 64)) == pytest.approx(0.2 * 8)
    assert muon_lr_ratio("none", (64, 16)) == 1.0
    assert math.isclose(muon_lr_ratio(None, (3, 1)), math.sqrt(3))
