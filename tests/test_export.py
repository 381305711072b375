"""`lmscope export --format hf`: transformers loads the folder, with lmscope's logits and ids."""

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from lmscope.api import load
from lmscope.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer
from lmscope.errors import LmscopeError
from lmscope.export import SUPPORTED, export_hf
from lmscope.models import MODELS
from lmscope.run.checkpoint import save_checkpoint
from tests.conftest import TINY_TEXT

TEXT = "First Citizen:\nBefore we proceed, hear me!\n\n  All:\tSpeak... 'Resolved.' -- ok?\r\n"
CHARS = CharTokenizer(sorted(set(TEXT)))


def tiny_checkpoint(path, tokenizer=CHARS, model="gpt", **config):
    """A small untrained model with weights large enough that its logits vary (seeded)."""
    torch.manual_seed(0)
    config_cls, model_cls = MODELS[model]
    sizes = ({"n_layer": 2, "n_head": 4, "n_embd": 32} if model == "gpt"
             else {"n_embd": 16, "n_hidden": 16} if model == "lstm" else {})
    cfg = config_cls(vocab_size=tokenizer.vocab_size, block_size=32, **sizes, **config)
    net = model_cls(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    save_checkpoint(path, net, model_name=model, model_config=cfg, tokenizer=tokenizer,
                    meta={"iter": 1})
    return path


def _run_cli(*args) -> tuple[int, str, str]:
    from lmscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# --- with transformers ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{}, {"bias": True}, {"tie_weights": False},
                                    {"bias": True, "tie_weights": False, "dropout": 0.1},
                                    {"pos_emb": "none"}],
                         ids=["tied", "bias", "untied", "bias-untied", "no-positions"])
def test_transformers_gives_lmscope_logits(tmp_path, config):
    transformers = pytest.importorskip("transformers")
    ckpt = load(tiny_checkpoint(tmp_path / "ckpt", **config), device="cpu")
    out = export_hf(ckpt, tmp_path / "hf")
    idx = torch.randint(0, CHARS.vocab_size, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ckpt.model(idx)
        assert expected.std() > 0.3  # logits that differ, not all near zero
        # the default attention (sdpa in newer transformers) and eager, which scales by itself
        hf = transformers.AutoModelForCausalLM.from_pretrained(out)
        models = [hf]
        if getattr(hf.config, "_attn_implementation", "eager") != "eager":
            models.append(transformers.AutoModelForCausalLM.from_pretrained(
                out, attn_implementation="eager"))
        for hf in models:
            assert type(hf).__name__ == "GPT2LMHeadModel" and not hf.training
            assert (hf.lm_head.weight is hf.transformer.wte.weight) == ckpt.model.config.tie_weights
            assert (hf(idx).logits - expected).abs().max() < 1e-4


def test_transformers_model_from_a_trained_run(tiny_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    code, stdout, stderr = _run_cli("export", tiny_run, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0, stderr
    ckpt = load(tiny_run, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    prompt = "First Citizen:\nBef"  # + 10 new tokens: within block_size 32, as GPT-2 needs
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == ckpt.tokenizer.encode(prompt)
    with torch.no_grad():
        assert (hf(ids).logits - ckpt.model(ids)).abs().max() < 1e-4
    greedy = hf.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:]
    from lmscope.api import generate

    assert tok.decode(greedy) == generate(ckpt, prompt, max_new_tokens=10, greedy=True)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_transformers_tokenizer_gives_lmscope_ids(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    tokenizer = {"char": CHARS, "byte": ByteTokenizer(),
                 "bpe": BPETokenizer.train([TINY_TEXT + TEXT], 320)}[kind]
    export_hf(load(tiny_checkpoint(tmp_path / "ckpt", tokenizer), device="cpu"), tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.is_fast
    texts = [TEXT, "\n", " ", "  two  spaces \n\n", "a.d ,c !", TEXT * 3]
    if kind != "char":
        texts += ["café, naïve – 東京 🙂\n", "\x00\x7f\ufffd"]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tok.encode(text) == tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == text
    if kind == "byte":  # broken UTF-8 decodes as in lmscope
        assert tok.decode([0xFF, 0x41, 0xE2, 0x82]) == tokenizer.decode([0xFF, 0x41, 0xE2, 0x82])


def test_char_tokenizer_unknown_characters_are_id_0(tmp_path):
    transformers = pytest.importorskip("transformers")
    export_hf(load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu"), tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Zebra <unk> \ufffd é!"  # lmscope refuses these in a prompt; evaluation maps them to 0
    assert tok.encode(text) == CHARS.encode(text, unknown="unk")
    assert tok.decode(CHARS.encode(text, unknown="unk")) == CHARS.decode(CHARS.encode(text, "unk"))
    assert tok.unk_token == "\ufffd" and tok.unk_token_id == 0


def test_char_vocabulary_holding_the_replacement_character(tmp_path):
    transformers = pytest.importorskip("transformers")
    chars = CharTokenizer(list("<unk>\ufffd ab"))
    export_hf(load(tiny_checkpoint(tmp_path / "ckpt", chars), device="cpu"), tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "a <unk> \ufffd b z"  # "<unk>" stays five characters; "z" is unknown
    assert tok.encode(text) == chars.encode(text, unknown="unk")


# --- without transformers ------------------------------------------------------------------------

def test_gpt2_names_layouts_and_config(tmp_path):
    ckpt = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu")
    out = export_hf(ckpt, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json"]
    w = load_file(out / "model.safetensors")
    per_layer = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    assert set(w) == {"transformer.wte.weight", "transformer.wpe.weight",  # tied: no lm_head
                      "transformer.ln_f.weight", "transformer.ln_f.bias",
                      *(f"transformer.h.{i}.{k}" for i in range(2) for k in per_layer)}
    m = ckpt.model
    assert torch.equal(w["transformer.h.1.attn.c_attn.weight"], m.blocks[1].attn.qkv.weight.t())
    assert w["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)  # Conv1D: (in, out)
    assert not w["transformer.h.0.mlp.c_fc.bias"].any()  # bias=False: zeros
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["layer_norm_epsilon"] == 1e-5
    assert (config["n_inner"], config["n_positions"]) == (128, 32)
    assert config["vocab_size"] == CHARS.vocab_size
    assert config["tie_word_embeddings"] is True and config["model_type"] == "gpt2"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_tokenizer_json_gives_lmscope_ids(tmp_path, kind):
    from tokenizers import Tokenizer

    tokenizer = {"char": CHARS, "byte": ByteTokenizer(),
                 "bpe": BPETokenizer.train([TINY_TEXT + TEXT], 320)}[kind]
    export_hf(load(tiny_checkpoint(tmp_path / "ckpt", tokenizer), device="cpu"), tmp_path / "hf")
    tok = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    text = TEXT + (" café 東京 🙂\x00" if kind != "char" else "")
    ids = tokenizer.encode(text)
    assert tok.encode(text).ids == ids and tok.decode(ids) == text
    if kind == "byte":
        assert ids == list(text.encode("utf-8"))


@pytest.mark.parametrize("model, config, named", [
    ("gpt", {"norm": "rmsnorm"}, "GPT-2 has no model.norm=rmsnorm;"),
    ("gpt", {"norm_position": "post"}, "GPT-2 has no model.norm_position=post;"),
    ("gpt", {"pos_emb": "rotary"}, "GPT-2 has no model.pos_emb=rotary;"),
    ("gpt", {"norm": "rmsnorm", "pos_emb": "rotary"}, "model.norm=rmsnorm, model.pos_emb=rotary"),
    ("gpt", {"mlp_act": "relu2"}, "GPT-2 has no model.mlp_act=relu2;"),
    ("gpt", {"qk_norm": True}, "GPT-2 has no model.qk_norm=true;"),
    ("lstm", {}, "it is a 'lstm' model"),
    ("kgram", {}, "it is a 'kgram' model"),
])
def test_what_gpt2_cannot_represent_is_refused(tmp_path, model, config, named):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", model=model, **config)
    with pytest.raises(LmscopeError) as e:
        export_hf(ckpt, tmp_path / "hf")
    message = str(e.value)
    assert named in message and SUPPORTED in message and "\n" not in message
    assert not (tmp_path / "hf").exists()


def test_an_existing_folder_is_replaced_only_with_force_and_only_an_export(tmp_path):
    ckpt = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu")
    (tmp_path / "empty").mkdir()
    export_hf(ckpt, tmp_path / "empty")  # an empty folder is fine
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(LmscopeError, match="already holds files.*--force"):
        export_hf(ckpt, tmp_path / "hf")
    with pytest.raises(LmscopeError, match="not an earlier export"):
        export_hf(ckpt, tmp_path / "hf", force=True)
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')  # some other project
    with pytest.raises(LmscopeError, match="not an earlier export"):
        export_hf(ckpt, tmp_path / "hf", force=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "notes.txt"]
    with pytest.raises(LmscopeError, match="is a file"):
        export_hf(ckpt, tmp_path / "hf" / "notes.txt")

    export_hf(ckpt, tmp_path / "again")
    (tmp_path / "again" / "stale.txt").write_text("from before")
    export_hf(ckpt, tmp_path / "again", force=True)
    assert not (tmp_path / "again" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "ckpt", "empty", "hf"]


def test_a_failed_export_leaves_the_old_folder(tmp_path, monkeypatch):
    ckpt = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu")
    export_hf(ckpt, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lmscope.export.save_file", disk_full)
    with pytest.raises(OSError):
        export_hf(ckpt, tmp_path / "hf", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # no temporary folder


def test_cli_export(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    code, stdout, stderr = _run_cli("export", ckpt, "--out", tmp_path / "hf")
    assert code == 0, stderr
    assert stdout == f"written to {tmp_path / 'hf'}/\n"
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    code, _, stderr = _run_cli("export", ckpt, "--out", tmp_path / "hf")
    assert code == 1 and stderr.startswith("error:") and "--force" in stderr
    code, _, stderr = _run_cli("export", ckpt, "--out", tmp_path / "hf", "--force")
    assert code == 0, stderr
    code, _, stderr = _run_cli("export", ckpt, "--format", "gguf", "--out", tmp_path / "g")
    assert code == 2 and "--format" in stderr and not (tmp_path / "g").exists()
