import csv
import json
import math

import numpy as np
import pytest

import lmscope
from lmscope.analysis.cross_domain import (
    MatrixRow,
    compute_row,
    cross_domain_matrix,
    from_rows,
    write_matrix,
)
from lmscope.errors import LmscopeError
from tests.conftest import png


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.reader(f))


def test_matrix_cells_are_whole_split_evaluations(domain_runs, tmp_path):
    runs = [domain_runs["play"], domain_runs["sums"]]
    corpora = [str(domain_runs["corpora"]["play"]), str(domain_runs["corpora"]["sums"])]
    m = cross_domain_matrix(runs, corpora, device="cpu", log=lambda *a: None)
    assert m.runs == ["play", "sums"] and m.corpora == ["play", "sums"]
    assert m.trained_on == ["play", "sums"] and m.joint_vocabulary
    for r, run in enumerate(runs):
        for c, corpus in enumerate(corpora):
            result = lmscope.evaluate(lmscope.load(run, device="cpu"), corpus)
            assert m.nats[r, c] == pytest.approx(result.bits_per_char * math.log(2), rel=1e-12)
    np.testing.assert_allclose(m.bits, m.nats / math.log(2))
    assert (m.oov_rate == 0).all()  # joint vocabulary: every character is known
    # a second evaluation gives exactly the same numbers
    again = cross_domain_matrix(runs, corpora, device="cpu", log=lambda *a: None)
    np.testing.assert_array_equal(again.nats, m.nats)
    assert m.own_domain_lowest() == {"play": True, "sums": True}

    paths = write_matrix(m, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"matrix.csv", "matrix_bits.csv", "oov.csv", "matrix.md", "matrix.json",
                     "matrix.png"}
    rows = read_csv(tmp_path / "out" / "matrix.csv")
    assert rows[0] == ["model", "trained_on", "play", "sums"]
    assert float(rows[1][2]) == pytest.approx(m.nats[0, 0], rel=1e-5)
    assert json.loads((tmp_path / "out" / "matrix.json").read_text())["own_domain_lowest"] == {
        "play": True, "sums": True}
    assert png(tmp_path / "out" / "matrix.png")


def test_rows_computed_apart_make_the_same_matrix(domain_runs, tiny_run, tmp_path):
    """A study computes each model's row in a unit of its own and assembles them: the same
    cells, labels and vocabulary verdict as `compute` over all the runs at once."""
    runs = [domain_runs["play"], domain_runs["sums"], tiny_run]
    corpora = [str(domain_runs["corpora"]["play"]), str(domain_runs["corpora"]["sums"])]
    whole = cross_domain_matrix(runs, corpora, device="cpu", log=lambda *a: None)
    rows = []
    for i, run in enumerate(runs):
        compute_row(run, corpora, device="cpu", log=lambda *a: None).save(tmp_path / f"{i}.json")
        rows.append(MatrixRow.load(tmp_path / f"{i}.json"))
    apart = from_rows(rows)
    assert apart.runs == whole.runs and apart.corpora == whole.corpora
    assert apart.trained_on == whole.trained_on and apart.results == whole.results
    np.testing.assert_array_equal(apart.nats, whole.nats)
    np.testing.assert_array_equal(apart.oov_rate, whole.oov_rate)
    assert apart.joint_vocabulary is whole.joint_vocabulary is False  # tiny_run's own
    assert from_rows(rows[:2]).joint_vocabulary


def test_models_with_their_own_vocabularies_count_unknown_characters(tiny_run, domain_runs):
    # tiny_run knows only the play text's characters: the sums corpus has digits it never saw
    m = cross_domain_matrix([tiny_run], [str(domain_runs["corpora"]["sums"])], device="cpu",
                            log=lambda *a: None)
    assert 0 < m.oov_rate[0, 0] < 1
    m2 = cross_domain_matrix([tiny_run, domain_runs["sums"]],
                             [str(domain_runs["corpora"]["sums"])], device="cpu",
                             log=lambda *a: None)
    assert not m2.joint_vocabulary


def test_matrix_bad_input(tmp_path, domain_runs):
    with pytest.raises(LmscopeError, match="does not exist"):
        cross_domain_matrix([tmp_path / "nope"], ["shakespeare"], log=lambda *a: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmscopeError, match="no checkpoints"):
        cross_domain_matrix([tmp_path / "empty"], ["shakespeare"], log=lambda *a: None)
    with pytest.raises(LmscopeError, match="unknown corpus"):
        cross_domain_matrix([domain_runs["play"]], ["no-such-corpus"], log=lambda *a: None)
    with pytest.raises(LmscopeError, match="at least one"):
        cross_domain_matrix([], ["shakespeare"], log=lambda *a: None)
