import itertools
import math

import pytest
import torch

import lmscope
from lmscope.data.tokenizers import CharTokenizer
from lmscope.errors import ConfigError, LmscopeError
from lmscope.export import export_hf
from lmscope.generate import SamplingConfig, generate_ids
from lmscope.models import build_model
from lmscope.models.gpt import GPT, GPTConfig, apply_rotary, rotary_tables
from lmscope.models.quantize import for_sampling
from lmscope.run.checkpoint import load, save_checkpoint
from tests.conftest import TINY_SETTINGS

VARIANTS = list(itertools.product(["layernorm", "rmsnorm"], ["pre", "post"],
                                  ["learned", "none", "rotary"]))


def tiny(norm="layernorm", norm_position="pre", pos_emb="learned", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, norm=norm,
                    norm_position=norm_position, pos_emb=pos_emb, **kw)
    return GPT(cfg).eval()


def sharpened(model: GPT, scale: float = 20.0) -> GPT:
    """Scale the query and key weights up: at init attention is nearly uniform, so positions
    (and a bug in them) would hardly show in the logits."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:2 * model.config.n_embd].mul_(scale)
    return model


@pytest.mark.parametrize("norm,position,pos_emb", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(norm, position, pos_emb):
    model = sharpened(tiny(norm, position, pos_emb))
    idx = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(1))
    base = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 17
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])  # the changed position itself does move


@pytest.mark.parametrize("norm,position,pos_emb", VARIANTS)
def test_kv_cache_decoding_matches_full_recomputation(norm, position, pos_emb):
    model = sharpened(tiny(norm, position, pos_emb))
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = model.new_cache(2)
    pieces = [model.decode(idx[:, :5], cache)]  # prefill 5 tokens
    pieces.append(model.decode(idx[:, 5:9], cache))  # 4 more at once after a cached prefix
    pieces += [model.decode(idx[:, t:t + 1], cache) for t in range(9, 16)]  # one at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 16


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_attention_probabilities_are_causal_distributions_and_logits_agree(pos_emb):
    model = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, 17, (2, 10), generator=torch.Generator().manual_seed(3))
    logits, attentions = model.forward_with_attention(idx)
    torch.testing.assert_close(logits, model(idx), rtol=1e-5, atol=1e-5)
    assert len(attentions) == 2
    for a in attentions:
        assert a.shape == (2, 2, 10, 10)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 10))
        assert torch.all(a.triu(diagonal=1) == 0)
    # the first query can only attend to itself
    assert torch.all(attentions[0][:, :, 0, 0] == 1)


def test_context_longer_than_block_size_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tied_weights_and_parameter_count():
    model = tiny()
    assert model.head.weight is model.tok_emb.weight
    untied = tiny(tie_weights=False)
    assert untied.num_params() == model.num_params() + 17 * 16


@pytest.mark.parametrize("field,value,message", [
    ("n_head", 3, "divisible"),
    ("n_layer", 0, "at least 1"),
    ("dropout", 1.0, "dropout"),
    ("norm", "batchnorm", "layernorm, rmsnorm"),
    ("pos_emb", "sinusoid", "learned, none"),
    ("mlp_act", "swish", "gelu, relu2"),
])
def test_invalid_configs_are_rejected_with_the_reason(field, value, message):
    cfg = GPTConfig(vocab_size=10, n_embd=16, n_head=2)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message):
        build_model("gpt", cfg)


@pytest.mark.parametrize("pos_emb", ["learned", "none", "rotary"])
def test_forward_from_embeddings_equals_forward(pos_emb):
    model = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, 17, (2, 9), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.forward_embeddings(model.embed(idx)), model(idx),
                               rtol=0, atol=0)


@pytest.mark.parametrize("settings", [
    {}, {"pos_emb": "rotary", "qk_norm": True}, {"norm_position": "post", "pos_emb": "none"},
    {"attn_only": True}, {"mlp_act": "relu2", "bias": False, "norm": "rmsnorm"}])
def test_last_logits_are_the_forward_passs_at_the_last_position(settings):
    """last_logits computes the last block at the last position only; every other position's
    work is the same, so its logits are forward_embeddings' last row, for any length and
    gradient (attribution differentiates it)."""
    model = tiny(**settings)
    for length in (1, 2, 9, model.context_length):
        idx = torch.randint(0, 17, (3, length), generator=torch.Generator().manual_seed(length))
        emb = model.embed(idx).detach().requires_grad_()
        full = model.forward_embeddings(emb)[:, -1]
        last = model.last_logits(emb)
        assert last.shape == (3, 17)
        torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)
        grad_full, = torch.autograd.grad(full[:, 4].sum(), emb)
        grad_last, = torch.autograd.grad(last[:, 4].sum(), emb)
        torch.testing.assert_close(grad_last, grad_full, rtol=1e-4, atol=1e-6)


# --- rotary position embeddings ---------------------------------------------------------------

def test_rotary_needs_an_even_head_size_and_says_which_settings_to_change():
    cfg = GPTConfig(vocab_size=10, n_embd=12, n_head=4, pos_emb="rotary")  # head size 3
    with pytest.raises(ConfigError, match=r"model\.n_embd \(12\) / model\.n_head \(4\) = 3"):
        build_model("gpt", cfg)
    cfg.pos_emb = "learned"  # odd head sizes are fine without rotary
    build_model("gpt", cfg)
    with pytest.raises(ConfigError, match="model.rope_base"):
        build_model("gpt", GPTConfig(vocab_size=10, n_embd=16, n_head=2, pos_emb="rotary",
                                     rope_base=0.0))


def test_rotary_matches_the_complex_number_definition():
    """Rotate-half: element i pairs with i + d/2, the pair turning by m * base^(-2i/d) at m."""
    d, base = 8, 10000.0
    cos, sin = rotary_tables(12, d, base)
    x = torch.randn(3, 12, d, dtype=torch.float64)
    pairs = torch.complex(x[..., :d // 2], x[..., d // 2:])
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angles = torch.arange(12, dtype=torch.float64)[:, None] * theta
    turned = pairs * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat([turned.real, turned.imag], dim=-1)
    torch.testing.assert_close(apply_rotary(x, cos.double(), sin.double()), expected)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rotary(x[:, :1], cos[:1], sin[:1]), x[:, :1])  # m = 0
    # float32 tables with bfloat16 activations (autocast): the result keeps the activations' dtype
    assert apply_rotary(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_rotary_scores_depend_only_on_relative_position():
    d = 16
    cos, sin = rotary_tables(64, d)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=gen), torch.randn(d, generator=gen)

    def score(m, n):
        return apply_rotary(q, cos[m], sin[m]) @ apply_rotary(k, cos[n], sin[n])

    for m, n, shift in [(0, 0, 5), (7, 3, 11), (3, 7, 20), (30, 0, 33), (12, 12, 51)]:
        torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 4))  # but the distance does matter


def test_first_layer_attention_of_a_rotary_model_is_translation_invariant():
    """On a sequence of one repeated token, layer 0 sees no absolute position: the log-ratio of
    the attention to the key d back and to itself is the same for every query position."""
    for pos_emb, invariant in [("rotary", True), ("learned", False)]:
        model = tiny(pos_emb=pos_emb)
        _, attentions = model.forward_with_attention(torch.full((1, 16), 4))
        log_a = attentions[0][0].log()  # (head, query, key)
        for d in (1, 3, 6):
            ratios = torch.stack([log_a[:, m, m - d] - log_a[:, m, m] for m in range(d, 16)])
            assert torch.allclose(ratios, ratios[0].expand_as(ratios), atol=1e-5) == invariant


def test_rotary_tables_are_buffers_outside_the_state_dict():
    model = tiny(pos_emb="rotary")
    assert {"rope_cos", "rope_sin"} <= dict(model.named_buffers()).keys()
    assert model.state_dict().keys() == tiny(pos_emb="none").state_dict().keys()
    assert model.num_params() == tiny(pos_emb="none").num_params()
    assert model.rope_cos.shape == (16, 8)  # block_size x head_dim


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_rotary_lower_precision_copies_decode_and_stay_close(precision):
    model = tiny(pos_emb="rotary")
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast = for_sampling(model, precision)
        full = fast(idx)
        assert full.dtype == torch.bfloat16
        torch.testing.assert_close(full.float(), model(idx), atol=0.1, rtol=0)
        cache = fast.new_cache(2)
        pieces = [fast.decode(idx[:, :9], cache)]
        pieces += [fast.decode(idx[:, t:t + 1], cache) for t in range(9, 16)]
        torch.testing.assert_close(torch.cat(pieces, dim=1).float(), full.float(),
                                   atol=0.05, rtol=0)
    out = generate_ids(fast, idx[:1, :4], SamplingConfig(max_new_tokens=40, seed=0))
    assert out.shape == (1, 40)  # past the window too (block_size 16)


def test_rotary_works_under_bfloat16_autocast():
    """Training on CUDA runs under bf16 autocast (tried here on the CPU)."""
    model = tiny(pos_emb="rotary")
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    torch.testing.assert_close(logits.float(), model(idx), atol=0.1, rtol=0)


def test_rotary_run_trains_saves_and_reloads(tiny_corpus, tmp_path):
    config = lmscope.resolve_config(data=str(tiny_corpus),
                                    overrides=[*TINY_SETTINGS, "model.pos_emb=rotary"])
    result = lmscope.train(config, tmp_path / "r", progress=False, log=lambda *a: None)
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "r" / "checkpoints" / "final" / "model.safetensors")
    assert stored and not any("rope" in key for key in stored)
    a, b = lmscope.load(tmp_path / "r", device="cpu"), lmscope.load(tmp_path / "r", device="cpu")
    assert a.model.config.pos_emb == "rotary"
    # the reloaded model scores the validation split exactly as the trained one did
    assert lmscope.evaluate(a, str(tiny_corpus)).loss == pytest.approx(result.val_loss, rel=1e-5)
    assert math.isfinite(result.val_loss)
    text = lmscope.generate(a, "First", max_new_tokens=40, seed=3)
    assert len(text) == 40
    assert lmscope.generate(b, "First", max_new_tokens=40, seed=3) == text
    ids = torch.tensor([a.tokenizer.encode("First Citizen:")])
    assert torch.equal(a.model(ids), b.model(ids))


@pytest.mark.parametrize("position", ["pre", "post"])
def test_attention_only_blocks_have_no_mlp_and_no_mlp_hooks(position):
    full, attn_only = tiny(norm_position=position), tiny(norm_position=position, attn_only=True)
    names = [n for n, _ in attn_only.named_parameters()]
    assert not any(".mlp." in n or ".norm2." in n for n in names)
    d = 16  # n_embd; an MLP is fc (d x 4d) and proj (4d x d), no biases; norm2 a gain of d
    assert full.num_params() - attn_only.num_params() == 2 * (8 * d * d + d)
    hooks = attn_only.hook_names()
    assert not any("mlp" in n or "ln2" in n for n in hooks)
    assert set(full.hook_names()) - set(hooks) == {
        f"blocks.{layer}.{n}" for layer in range(2)
        for n in ["mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"]
        + (["ln2.hook_normalized"] if position == "pre" else [])}
    idx = torch.randint(0, 17, (2, 12), generator=torch.Generator().manual_seed(7))
    _, cache = lmscope.run_with_cache(attn_only, idx)
    assert set(cache) == set(hooks)
    for layer in range(2):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_post"],
                           cache[f"blocks.{layer}.hook_resid_mid"])


def test_attention_only_equals_a_full_model_with_silent_mlps():
    """Pre-norm: a block whose MLP writes zeros adds nothing, so the logits are the same."""
    attn_only = sharpened(tiny(attn_only=True))
    full = tiny()
    missing, unexpected = full.load_state_dict(attn_only.state_dict(), strict=False)
    assert not unexpected and all(".mlp." in k or ".norm2." in k for k in missing)
    with torch.no_grad():
        for block in full.blocks:
            block.mlp.proj.weight.zero_()
    idx = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(attn_only(idx), full(idx), rtol=1e-6, atol=1e-6)
    cache = attn_only.new_cache(3)  # and generation's cached path agrees
    pieces = [attn_only.decode(idx[:, :6], cache)]
    pieces += [attn_only.decode(idx[:, t:t + 1], cache) for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(pieces, 1), attn_only(idx), rtol=1e-5, atol=1e-5)


def test_attention_only_checkpoint_round_trips_and_refuses_the_hf_export(tmp_path):
    model = sharpened(tiny(attn_only=True))
    tokenizer = CharTokenizer(list("abcdefghijklmnop"))
    assert tokenizer.vocab_size == 17
    save_checkpoint(tmp_path / "ckpt", model, model_name="gpt", model_config=model.config,
                    tokenizer=tokenizer, meta={"iter": 1})
    back = load(tmp_path / "ckpt", device="cpu")
    assert back.model.config.attn_only and back.model.blocks[0].mlp is None
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(9))
    assert torch.equal(back.model(idx), model(idx))
    with pytest.raises(LmscopeError, match=r"GPT-2 has no model.attn_only=true \(every GPT-2 "
                                           r"block has an MLP\)"):
        export_hf(back, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def _layer_norm_gradients(threads: int, bias: bool, reference: bool = False):
    """The gradients of a LayerNorm's input, weight and bias for one backward at `threads`
    threads (torch's own nn.LayerNorm with `reference`)."""
    from lmscope.models.gpt import LayerNorm

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        norm = (torch.nn.LayerNorm if reference else LayerNorm)(48, bias=bias)
        with torch.no_grad():
            norm.weight.normal_(generator=g)
            if bias:
                norm.bias.normal_(generator=g)
        x = torch.randn(16, 40, 48, generator=g, requires_grad=True)
        out = norm(x)
        out.backward(torch.randn(out.shape, generator=g))
        return [out.detach(), x.grad, norm.weight.grad] + ([norm.bias.grad] if bias else [])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_trains_the_same_on_any_number_of_threads_and_equals_torchs(bias):
    """lmscope's LayerNorm: the forward and the input's gradient are torch's, bit for bit; the
    weight and bias gradients equal torch's to float rounding and, unlike torch's, are the same
    bits at 1, 2 and 3 threads (a study's runs side by side get fewer threads each)."""
    one, two, three = (_layer_norm_gradients(t, bias) for t in (1, 2, 3))
    for a, b, c in zip(one, two, three, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    torch_ = _layer_norm_gradients(2, bias, reference=True)
    assert torch.equal(one[0], torch_[0]) and torch.equal(one[1], torch_[1])
    for ours, theirs in zip(one[2:], torch_[2:], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    state = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8,
                          bias=bias)).state_dict()
    assert {k for k in state if "norm" in k} == {
        f"{m}.{p}" for m in ("blocks.0.norm1", "blocks.0.norm2", "norm_f")
        for p in (("weight", "bias") if bias else ("weight",))}


def test_a_relu_squared_mlp_is_relu_squared_and_decodes_like_its_forward():
    """model.mlp_act = relu2: hook_post is ReLU(hook_pre)^2 (against torch's relu and a power),
    and KV-cache decoding equals the forward pass."""
    model = sharpened(GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                    mlp_act="relu2")))
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(3))
    _, cache = lmscope.run_with_cache(model, idx, ["blocks.0.mlp.hook_pre",
                                                   "blocks.0.mlp.hook_post"])
    pre, post = cache["blocks.0.mlp.hook_pre"], cache["blocks.0.mlp.hook_post"]
    torch.testing.assert_close(post, torch.relu(pre) ** 2, rtol=0, atol=0)
    assert (pre < 0).any() and (post[pre < 0] == 0).all()
    full = model(idx)
    cache = model.new_cache(2)
    steps = [model.decode(idx[:, :6], cache)] + [model.decode(idx[:, t:t + 1], cache)
                                                  for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_zero_initialised_projections_make_every_block_the_identity_until_the_first_step():
    """model.zero_init_proj: the attention and MLP output projections start at exactly zero, so
    each block's output equals its input (hook_resid_post == hook_resid_pre); at the first step
    only the projections, the embeddings, the final norm and the head get gradients (what feeds
    a zero projection gets none), and after one AdamW step the projections are no longer zero.
    Without it the projections keep GPT-2's depth-scaled normal init."""
    config = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16,
                       zero_init_proj=True)
    torch.manual_seed(0)
    model = GPT(config)
    projections = {n for n, _ in model.named_parameters() if n.endswith("proj.weight")}
    assert projections == {f"blocks.{i}.{part}.proj.weight" for i in (0, 1)
                           for part in ("attn", "mlp")}
    assert all((p == 0).all() for n, p in model.named_parameters() if n in projections)
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(5))
    names = [f"blocks.{i}.hook_resid_{w}" for i in (0, 1) for w in ("pre", "post")]
    _, cache = lmscope.run_with_cache(model, idx, names)
    for i in (0, 1):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_pre"], rtol=0, atol=0)
    F = torch.nn.functional
    F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, g in grads.items():
        feeds_a_projection = n.startswith("blocks.") and n not in projections
        assert (g is None or (g == 0).all()) == feeds_a_projection, n
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    assert all((p != 0).any() for n, p in model.named_parameters() if n in projections)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16))
    std = plain.blocks[0].mlp.proj.weight.std().item()
    assert 0.5 * 0.02 / math.sqrt(4) < std < 1.5 * 0.02 / math.sqrt(4)


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_qk_norm_gives_unit_rms_queries_and_keys_and_decodes_like_its_forward(pos_emb):
    """model.qk_norm: every head's query and key at hook_q / hook_k has root-mean-square 1
    (to the 1e-6 epsilon); causal, and KV-cache decoding equals the forward pass."""
    model = sharpened(GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                    qk_norm=True, pos_emb=pos_emb)))
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(4))
    _, cache = lmscope.run_with_cache(model, idx, ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"])
    for name in ("blocks.1.attn.hook_q", "blocks.1.attn.hook_k"):
        rms = cache[name].pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)
    plain = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16,
                          pos_emb=pos_emb))
    plain.load_state_dict(model.state_dict())  # the same parameters: qk_norm adds none
    assert not torch.allclose(plain(idx), model(idx))
    full = model(idx)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 17
    torch.testing.assert_close(model(changed)[:, :9], full[:, :9], rtol=0, atol=0)
    cache = model.new_cache(2)
    steps = [model.decode(idx[:, :6], cache)] + [model.decode(idx[:, t:t + 1], cache)
                                                  for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
