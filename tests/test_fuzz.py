"""Property-based fuzzing of what users type: --set overrides, config and prompt files, data
specs and prompts. Whatever the input, the answer is a value or a LmscopeError (which the
command line prints as one line), never another exception."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmscope.config import parse_override, resolve_config
from lmscope.data.corpora import parse_mixture
from lmscope.data.prompts import load_prompts
from lmscope.data.tokenizers import CharTokenizer, char_vocab
from lmscope.errors import LmscopeError
from lmscope.settings import load_toml

KEYS = ["train.max_iters", "train.lr", "train.checkpoint_at", "train.device", "data.corpus",
        "data.tokenizer", "model.n_head", "model.name", "model.dropout", "track.attention_every",
        "model.pos_emb", "train.eval_corpora", "nonsense", "train.", ".x", "a.b.c"]
VALUES = st.one_of(st.text(max_size=20), st.integers(-10**20, 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["true", "[1, 2]", "[]", "\"x\"", "{a = 1}", "nan", "inf",
                                    "1e400", "-0", "none", "[", "gpt", "lstm", "rotary"]))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=15)), value=VALUES,
       sep=st.sampled_from(["=", "", "=="]))
def test_any_override_gives_a_config_or_a_clear_error(key, value, sep):
    try:
        parse_override(f"{key}{sep}{value}")
        config = resolve_config(overrides=[f"{key}{sep}{value}"])
    except LmscopeError as e:
        assert str(e)  # the command line prints it as one line
        return
    assert config.train.max_iters >= 1 and math.isfinite(config.train.lr)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_config_file_gives_a_table_or_a_clear_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text, encoding="utf-8")
    try:
        raw = load_toml(path, "config file")
        resolve_config(config_file=path)
    except LmscopeError:
        return
    assert isinstance(raw, dict)


@FUZZ
@given(body=st.text(max_size=200), name=st.text(max_size=10), prompt=st.text(max_size=30))
def test_any_prompt_file_gives_prompts_or_a_clear_error(body, name, prompt, tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.toml"
    escaped = prompt.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'[[prompt]]\nname = "{name}"\ntext = "{escaped}"\n{body}', encoding="utf-8")
    try:
        prompts = load_prompts(path)
    except LmscopeError:
        return
    assert prompts and all(isinstance(p.text, str) and p.text for p in prompts)


@FUZZ
@given(spec=st.text(max_size=40))
def test_any_data_spec_gives_weights_or_a_clear_error(spec):
    try:
        parts = parse_mixture(spec)
    except LmscopeError:
        return
    assert math.isclose(sum(w for _, w in parts), 1.0)
    assert all(w > 0 for _, w in parts)


TOKENIZER = CharTokenizer(char_vocab(["First Citizen:\nBefore we proceed"]))


@FUZZ
@given(prompt=st.text(max_size=50))
def test_any_prompt_encodes_or_names_the_unknown_characters(prompt):
    try:
        ids = TOKENIZER.encode(prompt, unknown="error")
    except LmscopeError as e:
        assert "vocabulary" in str(e)
        return
    assert TOKENIZER.decode(ids) == prompt
