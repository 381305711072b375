import json
import pickle
from pathlib import Path

import pytest
import torch

from lmscope.api import load
from lmscope.data.tokenizers import CharTokenizer
from lmscope.errors import CheckpointError, LmscopeError
from lmscope.models.gpt import GPT, GPTConfig
from lmscope.run.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def _save(path, **config):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=8, block_size=8, n_layer=2, n_head=2, n_embd=16, **config)
    model = GPT(cfg)
    save_checkpoint(path, model, model_name="gpt", model_config=cfg,
                    tokenizer=CharTokenizer(list("abcdefg")), meta={"iter": 3})
    return model


@pytest.mark.parametrize("config", [{}, {"norm": "rmsnorm", "norm_position": "post",
                                         "pos_emb": "none", "tie_weights": False, "bias": True}])
def test_save_then_load_gives_bit_identical_logits(tmp_path, config):
    model = _save(tmp_path / "ckpt", **config).eval()
    ckpt = load_checkpoint(tmp_path / "ckpt")
    idx = torch.randint(0, 8, (2, 8))
    assert torch.equal(ckpt.model(idx), model(idx))
    assert ckpt.tokenizer.encode("abc") == CharTokenizer(list("abcdefg")).encode("abc")
    assert ckpt.iteration == 3 and not ckpt.model.training


def test_no_temporary_folders_are_left_behind(tmp_path):
    _save(tmp_path / "ckpt")
    _save(tmp_path / "ckpt")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_truncated_weights_are_rejected_naming_the_file(tmp_path):
    _save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ckpt")


def test_corrupt_or_foreign_meta_is_rejected(tmp_path):
    _save(tmp_path / "ckpt")
    meta = tmp_path / "ckpt" / "meta.json"
    good = json.loads(meta.read_text())
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupt: not valid JSON"):
        load_checkpoint(tmp_path / "ckpt")
    meta.write_text(json.dumps({**good, "version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "ckpt")
    meta.write_text(json.dumps({**good, "model_config": {**good["model_config"], "n_embd": 32}}))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(tmp_path / "ckpt")


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_posing_as_weights_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ckpt")
    assert not (tmp_path / "PWNED").exists()


def test_run_folder_resolves_to_final_else_latest(tiny_run):
    assert resolve_checkpoint(tiny_run).name == "final"
    names = [p.name for p in list_checkpoints(tiny_run)]
    assert names[:2] == ["iter_0000010", "iter_0000020"]
    assert {"best", "final", "last"} <= set(names)
    ckpt = load(tiny_run)
    assert ckpt.iteration == 30


def test_tokenizer_and_model_must_agree_on_the_vocabulary(tmp_path):
    _save(tmp_path / "ckpt")
    meta = tmp_path / "ckpt" / "meta.json"
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({**good, "tokenizer": {"kind": "char", "chars": list("ab")}}))
    with pytest.raises(CheckpointError, match="its tokenizer has 3 tokens, the model 8"):
        load_checkpoint(tmp_path / "ckpt")
    meta.write_text(json.dumps({**good, "model": ["gpt"]}))
    with pytest.raises(CheckpointError, match="'model' is missing or not a str"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_and_empty_paths_are_clear_errors(tmp_path):
    with pytest.raises(LmscopeError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        resolve_checkpoint(tmp_path / "empty")


def test_no_code_path_can_unpickle():
    """The loaders read safetensors and JSON only: nothing in the package calls pickle, or
    torch.load (which unpickles unless weights_only=True)."""
    import ast

    import lmscope

    root = Path(lmscope.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal")
                       for n in names):
                    found.append(f"{path.name}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr == "load" and \
                    isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"{path.name}:{node.lineno} calls torch.load")
    assert not found, found


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the tensor data: the file still parses
    path.write_bytes(bytes(data))


def test_every_file_is_recorded_with_its_sha256(tmp_path):
    import hashlib

    _save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    weights = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    assert meta["sha256"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    assert len(meta["meta_sha256"]) == 64


def test_a_flipped_byte_in_the_weights_is_an_error_naming_the_file(tmp_path):
    _save(tmp_path / "ckpt")
    _flip_last_byte(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt: its sha256 differs"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_changed_meta_json_is_an_error_naming_the_file(tmp_path):
    _save(tmp_path / "ckpt")
    meta = tmp_path / "ckpt" / "meta.json"
    meta.write_text(meta.read_text().replace('"iter": 3', '"iter": 7'))
    with pytest.raises(CheckpointError, match=r"meta.json is corrupt: its content differs"):
        load_checkpoint(tmp_path / "ckpt")


def test_checkpoints_written_before_the_hashes_existed_still_load(tmp_path):
    model = _save(tmp_path / "ckpt").eval()
    meta = tmp_path / "ckpt" / "meta.json"
    old = {k: v for k, v in json.loads(meta.read_text()).items()
           if k not in ("sha256", "meta_sha256")}
    meta.write_text(json.dumps(old))
    idx = torch.randint(0, 8, (1, 8))
    assert torch.equal(load_checkpoint(tmp_path / "ckpt").model(idx), model(idx))


def test_a_runs_checkpoints_folder_stands_for_the_run(tiny_run):
    """`lmscope sample runs/X/checkpoints` (a user's guess) works as `sample runs/X`."""
    from lmscope.run.checkpoint import resolve_checkpoint, select_checkpoints

    assert resolve_checkpoint(tiny_run / "checkpoints") == resolve_checkpoint(tiny_run)
    assert select_checkpoints(tiny_run / "checkpoints") == select_checkpoints(tiny_run)


def test_a_checkpoint_list_picks_iterations_and_names(tiny_run):
    from lmscope.run.checkpoint import select_checkpoints

    names = [p.name for p in select_checkpoints(tiny_run, "final,10")]
    assert names == ["iter_0000010", "final"]  # oldest first, whatever the order asked
    assert [p.name for p in select_checkpoints(tiny_run, "20, iter_0000010")] == [
        "iter_0000010", "iter_0000020"]
    assert [p.name for p in select_checkpoints(tiny_run, "30")] == ["final"]  # final's iteration
    with pytest.raises(LmscopeError, match=r"no checkpoint '15': it keeps iterations 10, 20 and "
                                           "final"):
        select_checkpoints(tiny_run, "10,15")
    with pytest.raises(LmscopeError, match="names no checkpoint"):
        select_checkpoints(tiny_run, " , ")
