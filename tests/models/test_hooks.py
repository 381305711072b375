"""Hook points (models/hooks.py) and lmscope.run_with_cache / run_with_hooks, checked against an
independent implementation (Hugging Face's GPT-2 with output_hidden_states) and against
properties that hold whatever the weights: a head whose output projection is zero contributes
nothing, patching every position from the clean run gives the clean run."""

import pytest
import torch

import lmscope
from lmscope.errors import LmscopeError
from lmscope.models.hooks import Hooks
from lmscope.run.checkpoint import load
from tests.test_export import CHARS, tiny_checkpoint


def _ids(n_rows=3, length=32, seed=1):
    return torch.randint(1, CHARS.vocab_size, (n_rows, length),
                         generator=torch.Generator().manual_seed(seed))


def test_the_residual_stream_matches_hugging_face_gpt2_at_every_layer(tiny_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = load(tiny_run, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(lmscope.export_hf(ckpt, tmp_path / "hf"),
                                                           attn_implementation="eager")
    ids = torch.randint(1, ckpt.tokenizer.vocab_size, (3, 32),
                        generator=torch.Generator().manual_seed(2))
    n_layer = ckpt.model.config.n_layer
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n_layer)] + ["ln_final.hook_normalized"]
    logits, cache = lmscope.run_with_cache(ckpt, ids, names)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    # hidden_states: the embeddings, the input of each later block, and the final norm's output
    assert len(out.hidden_states) == n_layer + 1
    for i, name in enumerate(names):
        assert (cache[name] - out.hidden_states[i]).abs().max() < 1e-5, name
    assert (logits - out.logits).abs().max() < 1e-4
    # the logit lens of the last layer: the final norm and head on the last residual stream
    last = lmscope.run_with_cache(ckpt, ids, f"blocks.{n_layer - 1}.hook_resid_post")[1]
    lens = ckpt.model.head(ckpt.model.norm_f(last[f"blocks.{n_layer - 1}.hook_resid_post"]))
    assert torch.allclose(lens.log_softmax(-1), logits.log_softmax(-1), atol=1e-5)


@pytest.mark.parametrize("config", [{}, {"norm_position": "post"}, {"pos_emb": "rotary"},
                                    {"norm": "rmsnorm", "pos_emb": "none"}])
def test_every_hook_point_is_reached_once_and_hooks_change_nothing_by_themselves(tmp_path, config):
    model = load(tiny_checkpoint(tmp_path / "ckpt", **config), device="cpu").model
    ids = _ids()
    with torch.no_grad():
        plain = model(ids)
        seen = []
        hooks = Hooks({name: lambda x, name: seen.append(name) for name in model.hook_names()})
        assert torch.equal(model(ids, hooks=Hooks()), plain)  # an empty Hooks: the same path
        hooked = model(ids, hooks=hooks)
    assert seen == model.hook_names()  # each point once, in the documented order
    # reading every point forces the explicit attention (for hook_pattern): the same numbers
    assert (hooked - plain).abs().max() < 1e-5
    logits, cache = lmscope.run_with_cache(model, ids)
    assert set(cache) == set(model.hook_names())
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (3, 4, 32, 32)
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 4, 32))
    assert torch.equal(pattern, pattern.tril())  # causal
    with torch.no_grad():
        maps = model.forward_with_attention(ids)[1]
    assert torch.allclose(pattern, maps[1], atol=1e-6)
    assert cache["blocks.0.attn.hook_z"].shape == (3, 32, 4, 8)  # (batch, pos, head, d_head)
    assert cache["blocks.0.attn.hook_q"].shape == (3, 32, 4, 8)


def test_run_with_cache_works_in_batches(tmp_path):
    model = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    ids = _ids(n_rows=5)
    whole = lmscope.run_with_cache(model, ids, ["blocks.0.hook_mlp_out"])
    pieces = lmscope.run_with_cache(model, ids, ["blocks.0.hook_mlp_out"], batch_size=2)
    assert torch.allclose(whole[0], pieces[0], atol=1e-6)
    assert torch.allclose(whole[1]["blocks.0.hook_mlp_out"], pieces[1]["blocks.0.hook_mlp_out"],
                          atol=1e-6)


def test_zero_ablating_a_head_whose_output_projection_is_zero_changes_nothing(tmp_path):
    model = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    layer, head, d_head = 1, 2, 8
    with torch.no_grad():
        model.blocks[layer].attn.proj.weight[:, head * d_head:(head + 1) * d_head] = 0.0
    ids = _ids()

    def ablate(h):
        def fn(z, name):
            z = z.clone()
            z[:, :, h] = 0.0
            return z
        return fn

    name = f"blocks.{layer}.attn.hook_z"
    plain = lmscope.run_with_hooks(model, ids, {})
    assert torch.allclose(lmscope.run_with_hooks(model, ids, {name: ablate(head)}), plain,
                          atol=1e-6)
    other = lmscope.run_with_hooks(model, ids, {name: ablate(head - 1)})  # a head that writes
    assert (other - plain).abs().max() > 1e-3


def test_patching_every_position_from_the_clean_run_gives_the_clean_run(tmp_path):
    model = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    clean, corrupted = _ids(seed=1), _ids(seed=2)
    for name in ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "ln_final.hook_normalized"):
        clean_logits, cache = lmscope.run_with_cache(model, clean, [name])
        patched = lmscope.run_with_hooks(model, corrupted, {name: lambda x, n, cache=cache: cache[n]})
        assert torch.allclose(patched, clean_logits, atol=1e-5), name
    # and every head's output of the last layer together, with the residual stream before it
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"]
    clean_logits, cache = lmscope.run_with_cache(model, clean, names)
    corrupted_logits = lmscope.run_with_hooks(model, corrupted, {})
    assert (corrupted_logits - clean_logits).abs().max() > 1e-2
    patched = lmscope.run_with_hooks(model, corrupted, {n: lambda x, n: cache[n] for n in names})
    assert torch.allclose(patched, clean_logits, atol=1e-5)


def test_text_goes_through_the_checkpoints_tokenizer(tiny_run):
    ckpt = load(tiny_run, device="cpu")
    logits, cache = lmscope.run_with_cache(ckpt, "First Citizen", ["hook_embed"])
    assert logits.shape == (1, 13, ckpt.tokenizer.vocab_size)
    assert cache["hook_embed"].shape == (1, 13, ckpt.model.config.n_embd)


def test_bad_hook_input_is_a_one_line_error(tmp_path, tiny_run):
    model = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    ids = _ids()
    with pytest.raises(LmscopeError, match=r"no hook point 'blocks.0.hook_resid_psot' \(did you "
                                           r"mean blocks.0.hook_resid_post\?\)"):
        lmscope.run_with_cache(model, ids, ["blocks.0.hook_resid_psot"])
    with pytest.raises(LmscopeError, match="no hook point 'blocks.5.hook_resid_pre'"):
        lmscope.run_with_cache(model, ids, ["blocks.5.hook_resid_pre"])  # layer out of range
    with pytest.raises(LmscopeError, match=r"returned \(3, 4\), not a tensor of the activation's "
                                           r"shape \(3, 32, 32\)"):
        lmscope.run_with_hooks(model, ids, {"hook_embed": lambda x, n: torch.zeros(3, 4)})
    with pytest.raises(LmscopeError, match="at most 32"):
        lmscope.run_with_cache(model, _ids(length=40), ["hook_embed"])
    with pytest.raises(LmscopeError, match="a text needs a checkpoint"):
        lmscope.run_with_cache(model, "First", ["hook_embed"])
    with pytest.raises(LmscopeError, match="batch_size must be at least 1"):
        lmscope.run_with_cache(model, ids, ["hook_embed"], batch_size=0)


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_the_lstm_and_the_kgram_mlp_have_their_own_hook_points(tmp_path, model):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu").model
    ids = _ids()
    with torch.no_grad():
        plain = net(ids)
    logits, cache = lmscope.run_with_cache(net, ids)
    assert set(cache) == set(net.hook_names())
    assert (logits - plain).abs().max() < 1e-5  # the layer-by-layer path: the same numbers
    last = net.hook_names()[-1]  # the input of the head
    assert last in ("lstm.1.hook_hidden", "mlp.0.hook_post"), last
    with torch.no_grad():
        assert torch.allclose(net.head(cache[last]), logits, atol=1e-5)  # the lens of the last layer
    clean, corrupted = _ids(seed=1), _ids(seed=2)
    clean_logits, clean_cache = lmscope.run_with_cache(net, clean, [last])
    patched = lmscope.run_with_hooks(net, corrupted, {last: lambda x, n: clean_cache[n]})
    assert torch.allclose(patched, clean_logits, atol=1e-5)


def test_an_lstm_cell_state_is_read_not_replaced(tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model="lstm"), device="cpu").model
    cache = lmscope.run_with_cache(net, _ids(), ["lstm.0.hook_cell", "lstm.0.hook_hidden"])[1]
    assert cache["lstm.0.hook_cell"].shape == cache["lstm.0.hook_hidden"].shape == (3, 32, 16)
    with pytest.raises(LmscopeError, match="lstm.0.hook_cell can be read, not replaced"):
        lmscope.run_with_hooks(net, _ids(), {"lstm.0.hook_cell": lambda x, n: x * 0})


@pytest.mark.parametrize("model", ["gpt", "lstm", "kgram"])
def test_layer_points_are_hook_points_from_the_input_to_what_the_head_reads(tmp_path, model):
    ckpt = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu")
    points = ckpt.model.layer_points()
    labels = [label for label, _ in points]
    assert labels == ["embed"] + [str(i) for i in range(ckpt.model.config.n_layer)]
    assert {name for _, name in points} <= set(ckpt.model.hook_names())
    ids = _ids(2, 16)
    logits, cache = lmscope.run_with_cache(ckpt, ids, [name for _, name in points])
    # the last layer's representation is what the head reads: unembedding it gives the logits
    last = cache[points[-1][1]]
    assert torch.allclose(ckpt.model.unembed(last), logits, atol=1e-5)
