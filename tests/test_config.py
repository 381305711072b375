import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmscope.config import (
    TrainConfig,
    config_from_dict,
    parse_override,
    preset_names,
    resolve_config,
)
from lmscope.errors import ConfigError


def test_presets_match_the_documented_recipes():
    assert {"shakespeare-char", "shakespeare-char-cpu", "shakespeare-char-fast",
            "shakespeare-char-speedrun"} <= set(preset_names())
    for name in preset_names():  # every preset is a valid config
        assert resolve_config(preset=name).data.corpus
    baby = resolve_config(preset="shakespeare-char")
    assert (baby.model.n_layer, baby.model.n_head, baby.model.n_embd, baby.model.block_size) == (
        6, 6, 384, 256)
    assert (baby.train.batch_size, baby.model.dropout, baby.train.lr, baby.train.max_iters) == (
        64, 0.2, 1e-3, 5000)
    cpu = resolve_config(preset="shakespeare-char-cpu")
    assert (cpu.model.n_layer, cpu.model.n_head, cpu.model.n_embd, cpu.model.block_size) == (
        4, 4, 128, 64)
    assert (cpu.train.batch_size, cpu.model.dropout, cpu.train.max_iters) == (12, 0.0, 2000)


def test_layers_stack_with_later_layers_winning(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nmax_iters = 7\nlr = 0.01\n[model]\nn_layer = 3\n')
    cfg = resolve_config(preset="shakespeare-char-cpu", config_file=f, data="math",
                         overrides=["train.max_iters=9", "data.tokenizer=byte"])
    assert cfg.train.max_iters == 9 and cfg.train.lr == 0.01 and cfg.model.n_layer == 3
    assert cfg.data.corpus == "math" and cfg.data.tokenizer == "byte"
    assert cfg.model.n_embd == 128  # from the preset


def test_toml_round_trip_gives_the_same_config(tmp_path):
    cfg = resolve_config(preset="shakespeare-char", overrides=["train.checkpoint_at=5,50",
                                                              "train.sample_prompt=ROMEO:\n\"x\""])
    f = tmp_path / "config.toml"
    f.write_text(cfg.to_toml())
    assert resolve_config(config_file=f) == cfg


@pytest.mark.parametrize("item,message", [
    ("train.max_iter=5", "did you mean train.max_iters"),
    ("model.n_layers=2", "did you mean model.n_layer"),
    ("trian.lr=1", "unknown config section 'trian' (did you mean train"),
    ("max_iters=5", "section.name"),
    ("train.max_iters", "key=value"),
    ("train.max_iters=abc", "train.max_iters must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("train.compile=maybe", "true or false"),
    ("model.n_head=5", "divisible"),
    ("train.batch_size=0", "at least 1"),
    ("data.tokenizer=word", "char, byte or bpe"),
    ("model.name=rnn", "unknown model 'rnn'"),
    ("train.min_lr=0.1", "must not exceed train.lr"),
    ("train.lr=nan", "train.lr must be a number"),
])
def test_bad_overrides_name_the_problem(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_config(preset="shakespeare-char-cpu", overrides=[item])


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean shakespeare-char-cpu"):
        resolve_config(preset="shakespeare-char-cpux")


def test_default_checkpoint_schedule_is_1_2_5():
    assert TrainConfig(max_iters=5000).checkpoint_iters() == [100, 200, 500, 1000, 2000]
    assert TrainConfig(max_iters=300, checkpoint_every=100).checkpoint_iters() == [100, 200]
    assert TrainConfig(max_iters=300, checkpoint_at=[0, 7, 999]).checkpoint_iters() == [0, 7]
    assert TrainConfig(max_iters=5000, checkpoint_at=[]).checkpoint_iters() == []  # none at all
    cfg = resolve_config(overrides=["train.checkpoint_at=[]"])
    assert cfg.train.checkpoint_iters() == []


def test_the_log_schedule_is_pythias():
    # Pythia (Biderman et al. 2023): 0, 1, 2, 4, ..., 512, then every 1000
    assert TrainConfig(max_iters=5000, checkpoint_schedule="log").checkpoint_iters() == [
        0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000, 4000]
    both = TrainConfig(max_iters=300, checkpoint_schedule="log", checkpoint_log_until=20,
                       checkpoint_every=100, checkpoint_at=[150])
    assert both.checkpoint_iters() == [0, 1, 2, 4, 8, 16, 100, 150, 200]
    # the periodic part starts after the last power of two kept, not after the bound
    assert TrainConfig(max_iters=2500, checkpoint_schedule="log", checkpoint_log_until=1000
                       ).checkpoint_iters()[-4:] == [256, 512, 1000, 2000]
    cfg = resolve_config(overrides=["train.checkpoint_schedule=log", "train.max_iters=10"])
    assert cfg.train.checkpoint_iters() == [0, 1, 2, 4, 8]
    with pytest.raises(ConfigError, match="checkpoint_schedule must be auto or log"):
        resolve_config(overrides=["train.checkpoint_schedule=pythia"])


@given(st.text(max_size=30))
def test_override_parsing_never_crashes_unexpectedly(text):
    with contextlib.suppress(ConfigError):
        resolve_config(overrides=[text])


@given(st.integers(-5, 10**6))
def test_integer_overrides_are_read_or_rejected(n):
    try:
        cfg = config_from_dict(
            {"train": parse_override(f"train.max_iters={n}")["train"]})
        assert cfg.train.max_iters == n and n >= 1
    except ConfigError as e:
        assert n < 1 and "at least 1" in str(e)


@pytest.mark.parametrize("text,message", [
    ("model = 5", "[model] must be a table"),
    ("[model]\nname = []", "unknown model"),
    ("[train]\nmax_iters = [1, 2]", "train.max_iters must be an integer"),
    ("[data]\ncorpus = 3.5\ntokenizer = true", "data.tokenizer must be a string"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_config(config_file=f)
