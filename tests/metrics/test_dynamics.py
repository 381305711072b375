"""The parameter-level dynamics helpers (metrics/dynamics.py): layers from names, fast singular
values against numpy's SVD, and probe gradients that leave the training state alone."""

import numpy as np
import pytest
import torch

from lmscope.metrics.dynamics import (
    gram_singular_values,
    layer_order,
    parameter_layer,
    probe_gradients,
)
from lmscope.models import MODELS


@pytest.mark.parametrize("name,layer", [
    ("tok_emb.weight", "embed"), ("pos_emb.weight", "embed"),
    ("blocks.3.attn.qkv.weight", "3"), ("blocks.12.mlp.proj.weight", "12"),
    ("lstm.weight_ih_l1", "1"), ("lstm.bias_hh_l0", "0"), ("mlp.2.weight", "2"),
    ("norm_f.weight", "head"), ("head.weight", "head"), ("head.bias", "head")])
def test_a_parameters_layer_comes_from_its_name(name, layer):
    assert parameter_layer(name) == layer


def test_layers_sort_from_the_embeddings_to_the_head():
    assert sorted(["head", "10", "2", "embed", "0"], key=layer_order) == [
        "embed", "0", "2", "10", "head"]


@pytest.mark.parametrize("shape", [(40, 128), (128, 40), (64, 64)])
def test_gram_singular_values_match_numpys_svd(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    fast = gram_singular_values(w).numpy()
    assert fast.shape == s.shape
    assert np.allclose(fast, s, rtol=1e-9, atol=1e-9 * s[0])


def test_probe_gradients_write_no_grad_and_keep_the_mode():
    config_cls, model_cls = MODELS["gpt"]
    net = model_cls(config_cls(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16,
                               dropout=0.5))
    net.train()
    ids = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(1))
    state = torch.random.get_rng_state()
    loss, grads = probe_gradients(net, ids)
    assert torch.equal(torch.random.get_rng_state(), state)  # eval mode: no dropout draws
    assert net.training and all(p.grad is None for p in net.parameters())
    net.eval()
    net.zero_grad()
    reference = torch.nn.functional.cross_entropy(net(ids[:, :-1]).flatten(0, 1),
                                                  ids[:, 1:].flatten())
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    for name, p in net.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-7), name
    mask = torch.zeros(3, 15, dtype=torch.bool)
    assert probe_gradients(net, ids, mask)[1] == {}  # no target: nothing to differentiate


def test_probe_gradients_in_batches_are_the_whole_means_gradient():
    config_cls, model_cls = MODELS["lstm"]
    net = model_cls(config_cls(vocab_size=20, block_size=12, n_embd=8, n_hidden=8, n_layer=1))
    ids = torch.randint(0, 20, (5, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.rand(5, 11, generator=torch.Generator().manual_seed(3)) > 0.3
    whole_loss, whole = probe_gradients(net, ids, mask, batch_size=5)
    loss, batched = probe_gradients(net, ids, mask, batch_size=2)  # 2 + 2 + 1 windows
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    for name, g in whole.items():
        assert torch.allclose(batched[name], g, atol=1e-7), name
