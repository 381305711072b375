import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.generate import SamplingConfig, generate_ids
from lmscope.models.gpt import GPT, GPTConfig
from lmscope.models.quantize import Int8Linear, for_sampling


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=64,
                         bias=True)).eval()


@pytest.mark.parametrize("n_in,n_out", [(64, 48), (50, 37), (7, 3)])
def test_int8_linear_matches_the_dequantized_weights(n_in, n_out):
    """64 inputs take the fused kernel; 50 and 7 (not multiples of 16) the plain path."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out)
    q = Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (n_out, n_in)
    x = torch.randn(5, n_in)
    dequant = q.weight.float() * q.scale.float()[:, None]
    # per-row scales: every weight is within one quantization step of the original (half a step
    # from rounding, plus the scale's own bfloat16 rounding, at most 127 * 2^-8 of a step)
    assert torch.all((dequant - lin.weight).abs() <= q.scale.float()[:, None])
    torch.testing.assert_close(q(x).float(), lin(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("precision,atol", [("bfloat16", 0.1), ("int8", 0.2)])
def test_lower_precision_copies_stay_close_and_leave_the_original_alone(precision, atol):
    model = _model()
    idx = torch.randint(0, 40, (2, 32))
    with torch.no_grad():
        ref = model(idx)
        fast = for_sampling(model, precision)
        torch.testing.assert_close(fast(idx).float(), ref, atol=atol, rtol=0)
    assert next(model.parameters()).dtype == torch.float32  # untouched
    out = generate_ids(fast, idx[:1, :4], SamplingConfig(max_new_tokens=40, seed=0))
    assert out.shape == (1, 40)


def test_float32_is_the_model_itself_and_unknown_precisions_are_refused():
    model = _model()
    assert for_sampling(model, "float32") is model
    with pytest.raises(LmscopeError, match="precision must be one of"):
        for_sampling(model, "int4")
