"""The one policy of every command that writes an --out folder (run/out_dir.py)."""

import pytest

from lmscope.errors import LmscopeError
from lmscope.run.out_dir import MANIFEST, OutDir, record_outputs


def _write(out, *names):
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)


def test_a_new_or_empty_folder_is_written_and_its_files_recorded(tmp_path):
    out = tmp_path / "new"
    with OutDir(out, "probe softmax"):
        _write(out, "summary.md", "sub/a.csv")
    assert OutDir(out, "probe softmax").recorded() == ("probe softmax", {"summary.md", "sub/a.csv"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with OutDir(empty, "compare"):
        _write(empty, "compare.md")
    assert (empty / MANIFEST).is_file()


def test_a_users_file_is_never_replaced_even_with_force(tmp_path):
    out = tmp_path / "out"
    _write(out, "summary.md")  # the user's own notes, under a name a probe also writes
    for force in (False, True):
        with pytest.raises(LmscopeError, match=r"holds files lmscope did not write \(summary.md\)"):
            OutDir(out, "probe softmax", force=force).__enter__()
    assert (out / "summary.md").read_text() == "summary.md" and not (out / MANIFEST).exists()


def test_earlier_outputs_need_force_which_replaces_only_them(tmp_path):
    out = tmp_path / "out"
    with OutDir(out, "probe softmax"):
        _write(out, "summary.md", "old_only.png")
    with pytest.raises(LmscopeError, match="outputs of an earlier `lmscope probe softmax`; add "
                                           "--force"):
        OutDir(out, "probe softmax").check()
    with OutDir(out, "probe softmax", force=True):
        assert not (out / "old_only.png").exists()  # an earlier output that is not written again
        _write(out, "summary.md")
    assert OutDir(out, "probe softmax").recorded()[1] == {"summary.md"}


def test_a_command_that_resumes_accepts_its_own_outputs(tmp_path):
    out = tmp_path / "out"
    with OutDir(out, "transfer", resumes=True):
        _write(out, "runs/early/metrics.jsonl")
    with OutDir(out, "transfer", resumes=True):  # no --force needed, nothing removed
        assert (out / "runs/early/metrics.jsonl").is_file()
        _write(out, "summary.md")
    assert OutDir(out, "transfer").recorded()[1] == {"runs/early/metrics.jsonl", "summary.md"}
    with pytest.raises(LmscopeError, match="earlier `lmscope transfer`"):
        OutDir(out, "compare").check()  # another command still needs --force


def test_a_file_as_out_and_a_report_added_later(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LmscopeError, match="is a file"):
        OutDir(tmp_path / "f", "compare").check()
    out = tmp_path / "out"
    with OutDir(out, "probe attention"):
        _write(out, "attention.json")
    _write(out, "report.html")
    record_outputs(out, ["report.html"], "report")
    with OutDir(out, "probe attention", force=True):
        _write(out, "attention.json")
