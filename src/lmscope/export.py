"""Export a GPT checkpoint as a Hugging Face `transformers` GPT-2 model folder.

    lmscope export runs/shakespeare --format hf --out hf/shakespeare

    model = transformers.AutoModelForCausalLM.from_pretrained("hf/shakespeare")
    tok = transformers.AutoTokenizer.from_pretrained("hf/shakespeare")

The folder holds config.json (a GPT2Config), model.safetensors (GPT-2's tensor names and
layouts), and the tokenizer: tokenizer.json (Hugging Face `tokenizers`), tokenizer_config.json
and special_tokens_map.json. Writing it needs only safetensors and tokenizers; loading it
needs transformers. The exported model gives lmscope's logits, and its tokenizer lmscope's ids.

lmscope's GPT is a GPT-2 when its blocks are pre-norm with LayerNorm and its positions are
learned (or absent: an all-zero position table adds nothing). RMSNorm, post-norm and rotary
positions, the ReLU-squared MLP and QK-norm have no GPT-2 equivalent and are refused, as are
attention-only blocks (no MLP) and the LSTM and k-gram models.
Where lmscope has no biases (`bias=False`), GPT-2's are written as zeros.

Tokenizers: byte-level BPE is already a `tokenizers` tokenizer and is copied as it is; the
byte tokenizer becomes a byte-level BPE with no merges (id = byte value); the character
tokenizer becomes a WordLevel vocabulary behind a pre-tokenizer that cuts every character
(newlines too) into its own piece. One difference: lmscope refuses a prompt with characters
outside its vocabulary, the exported tokenizer encodes them as the unknown token (id 0),
as lmscope does when evaluating on another corpus.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmscope.data.tokenizers import UNK, UNK_TEXT, CharTokenizer, Tokenizer, byte_level_chars
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_json, writing_dir
from lmscope.run.checkpoint import Checkpoint, load

SUPPORTED = ("--format hf exports GPT models with model.norm=layernorm, model.norm_position=pre, "
             "model.pos_emb=learned or none, model.mlp_act=gelu and no qk_norm")


def export_hf(checkpoint: Checkpoint | str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write a checkpoint (or a run folder's final, else latest) as a transformers GPT-2 folder.

    An existing folder that holds files is refused, unless `force` is given and it is an
    earlier export (a GPT-2 config.json beside a model.safetensors). The folder is written whole under a temporary name
    and then renamed into place, so an error leaves what was there before.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load(checkpoint, device="cpu")
    check_exportable(checkpoint)
    out = Path(os.path.abspath(out))  # a name even for "."
    _check_out(out, force)
    model = checkpoint.model
    with writing_dir(out, str(out)) as tmp:
        atomic_write_json(tmp / "config.json", gpt2_config(model))
        save_file(gpt2_state_dict(model), tmp / "model.safetensors",
                  metadata={"format": "pt"})  # transformers reads only "pt"-tagged files
        write_hf_tokenizer(checkpoint.tokenizer, tmp, model_max_length=model.config.block_size)
    return out


def check_exportable(ckpt: Checkpoint) -> None:
    """Raise LmscopeError naming everything in the model that GPT-2 cannot represent."""
    if ckpt.model_name != "gpt":
        raise LmscopeError(f"cannot export {ckpt.path}: it is a {ckpt.model_name!r} model; "
                           f"{SUPPORTED}")
    c = ckpt.model.config
    wanted = {"norm": ("layernorm",), "norm_position": ("pre",), "pos_emb": ("learned", "none"),
              "mlp_act": ("gelu",)}
    bad = [f"model.{k}={getattr(c, k)}" for k, ok in wanted.items() if getattr(c, k) not in ok]
    if c.attn_only:
        bad.append("model.attn_only=true (every GPT-2 block has an MLP)")
    if c.qk_norm:
        bad.append("model.qk_norm=true")
    if bad:
        raise LmscopeError(f"cannot export {ckpt.path}: GPT-2 has no {', '.join(bad)}; "
                           f"{SUPPORTED}")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LmscopeError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise LmscopeError(f"{out} already holds files; choose another --out, or pass --force "
                           "to replace an earlier export")
    if not _is_export(out):  # never wipe a run folder or a project by mistake
        raise LmscopeError(f"{out} holds files but is not an earlier export (a GPT-2 config.json "
                           "with model.safetensors); --force only replaces an exported model "
                           "folder")


def _is_export(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "gpt2"
            and (folder / "model.safetensors").is_file())


# --- the model -----------------------------------------------------------------------------------

def gpt2_config(model: torch.nn.Module) -> dict:
    """config.json: a GPT2Config with lmscope's sizes, activation and LayerNorm epsilon."""
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": model.blocks[0].mlp.fc.out_features,  # 4 * n_embd
        "activation_function": "gelu",  # F.gelu's default: the exact erf form ("gelu_new" is tanh)
        "layer_norm_epsilon": model.norm_f.eps,
        "scale_attn_weights": True,  # scores / sqrt(head_dim), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c.tie_weights,
        # lmscope applies its one dropout where GPT-2 has these three (none at inference)
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "resid_pdrop": c.dropout,
        "initializer_range": 0.02,
        "bos_token_id": None,  # lmscope's tokenizers have no special tokens
        "eos_token_id": None,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def gpt2_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """lmscope's weights under GPT-2's names, float32 on the CPU.

    GPT-2's Conv1D stores a weight as (in, out), the transpose of nn.Linear's (out, in).
    The fused qkv projection splits into q, k, v along its outputs in both, heads alike.
    """
    c = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok_emb.weight"],
           # no positions at all: a zero table adds nothing
           "transformer.wpe.weight": sd.get("pos_emb.weight", torch.zeros(c.block_size, c.n_embd))}

    def bias(name: str, size: int) -> torch.Tensor:
        return sd.get(f"{name}.bias", torch.zeros(size))  # bias=False: GPT-2's biases are zeros

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = bias(src, c.n_embd)

    def linear(src: str, dst: str) -> None:
        w = sd[f"{src}.weight"]
        out[f"{dst}.weight"] = w.t()
        out[f"{dst}.bias"] = bias(src, w.shape[0])

    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        norm(b + "norm1", h + "ln_1")
        linear(b + "attn.qkv", h + "attn.c_attn")
        linear(b + "attn.proj", h + "attn.c_proj")
        norm(b + "norm2", h + "ln_2")
        linear(b + "mlp.fc", h + "mlp.c_fc")
        linear(b + "mlp.proj", h + "mlp.c_proj")
    norm("norm_f", "transformer.ln_f")
    if not c.tie_weights:  # tied: transformers reuses wte
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}  # safetensors refuses shared memory


# --- the tokenizer -------------------------------------------------------------------------------

def write_hf_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for AutoTokenizer."""
    hf, special = hf_tokenizer(tokenizer)
    (folder / "tokenizer.json").write_text(_tokenizer_json(hf), encoding="utf-8")
    atomic_write_json(folder / "tokenizer_config.json", {
        # the generic fast tokenizer: it runs tokenizer.json as written (GPT2Tokenizer would not)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,  # would turn " ." into "." when decoding
        "model_max_length": model_max_length,
        **special,
    })
    atomic_write_json(folder / "special_tokens_map.json", special)


def _tokenizer_json(hf) -> str:
    """tokenizer.json, with BPE merges as "a b" strings rather than ["a", "b"] pairs: the form
    tokenizers < 0.20 (transformers < 4.45) reads as well. Byte-level tokens hold no spaces."""
    d = json.loads(hf.to_str())
    merges = d["model"].get("merges")
    if merges and all(isinstance(m, list) and " " not in "".join(m) for m in merges):
        d["model"]["merges"] = [" ".join(m) for m in merges]
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def hf_tokenizer(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` giving lmscope's ids, and its special tokens for transformers."""
    if tokenizer.kind == "bpe":
        return tokenizer.hf, {}
    if tokenizer.kind == "byte":
        return _byte_tokenizer(), {}
    if tokenizer.kind == "char":
        return _char_tokenizer(tokenizer)
    raise LmscopeError(f"cannot export a {tokenizer.kind!r} tokenizer; "
                       "--format hf exports char, byte and bpe tokenizers")


def _char_tokenizer(tokenizer: CharTokenizer):
    """WordLevel over id 0 = unknown, 1.. = the characters, every character its own piece."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    # id 0 decodes to "�" as in lmscope, unless "�" is a character of the vocabulary itself
    unk = UNK_TEXT if UNK_TEXT not in tokenizer.stoi else UNK
    vocab = {unk: 0, **tokenizer.stoi}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=unk))
    # [\s\S] is any character, newlines included ('.' would skip them); no normalizer
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()  # join the pieces as they are, no spaces between
    # Only "�" is declared transformers' unk_token: transformers cuts special tokens out of the
    # text first, so a declared "<unk>" would make the five characters "<unk>" id 0. A literal
    # "�" outside the vocabulary is unknown (id 0) in lmscope as well.
    return hf, ({"unk_token": unk} if unk == UNK_TEXT else {})


def _byte_tokenizer():
    """A byte-level BPE without merges: each UTF-8 byte one token, its id the byte's value."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in enumerate(byte_level_chars())}
    hf = HFTokenizer(models.BPE(vocab, []))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()  # broken UTF-8 decodes to "�", as in lmscope
    return hf
