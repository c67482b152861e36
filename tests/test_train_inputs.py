"""``cyclecorr train`` refuses before working and keeps its run folder consistent: bad options and
values named on one line, no folder left by a refused run, --resume only of a run that exists (with
its own configuration even when config.json is gone), temporary files of an interrupted save
cleared, ``last.safetensors`` agreeing with ``last.json`` after a kill between the two."""
from __future__ import annotations

import json

import pytest

from cyclecorr.checkpoint import file_sha256, read_metadata
from cyclecorr.cli import main
from cyclecorr.train.config import load_config

SMOKE = ["train", "--preset", "smoke", "--data", "synthetic", "--no-progress"]


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cyclecorr train: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args,words", [
    (["--set", "stage1.iterations=abc"], ["--set stage1.iterations=abc", "expected an integer"]),
    (["--set", "stage1.nosuch=3"], ["--set stage1.nosuch=3", "unknown key(s) ['nosuch']"]),
    (["--set", "stage2.optim.lr=-1"], ["--set stage2.optim.lr=-1", "must be positive"]),
    (["--device", "nosuch"], ["--device nosuch", "not a device name"]),
    (["--data", "{tmp}/no_quartets"], ["quartet folder not found", "no_quartets"]),
])
def test_bad_options_named_and_no_folder_left(tmp_path, capsys, args, words):
    out = tmp_path / "run"
    rc = main(SMOKE + ["--out", str(out)] + [a.format(tmp=tmp_path) for a in args])
    _one_line_error(capsys, rc, *words)
    assert not out.exists()  # a refused run leaves no config.json (nor the folder)


def test_threads_must_be_positive(tmp_path, capsys):
    for n in ("0", "-3"):
        with pytest.raises(SystemExit) as e:
            main(SMOKE + ["--out", str(tmp_path / "r"), "--threads", n])
        assert e.value.code == 2
        assert "--threads: must be ≥ 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="runtime.threads must be ≥ 0"):
        load_config("smoke", ["runtime.threads=-1"])


def test_out_that_is_a_file_refused(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    _one_line_error(capsys, main(SMOKE + ["--out", str(f)]), f"--out {f}: is a file")
    _one_line_error(capsys, main(SMOKE + ["--out", str(f / "sub")]),
                    f"cannot create the folder, {f} is a file")


def test_diverging_run_is_one_line(tmp_path, capsys):
    rc = main(SMOKE + ["--out", str(tmp_path / "r"), "--set", "stage1.optim.lr=1e30"])
    _one_line_error(capsys, rc, "loss is", "lower the learning rate",
                    "stage1.optim.lr = 1e+30")


def test_resume_needs_a_run_and_uses_its_own_configuration(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, main(SMOKE + ["--out", str(empty), "--resume"]),
                    "--resume", "holds no checkpoint")
    assert list(empty.iterdir()) == []
    _one_line_error(capsys, main(SMOKE + ["--out", str(tmp_path / "none"), "--resume"]),
                    "holds no checkpoint")
    run = tmp_path / "run"
    # stop after the first checkpoint of stage 2 (step 3 of 6), then lose config.json
    assert main(SMOKE + ["--out", str(run), "--set", "stage2.iterations=3"]) == 0
    capsys.readouterr()
    (run / "config.json").unlink()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["stage2"]["iterations"] == 3


def test_interrupted_save_leaves_nothing_and_last_files_agree(tmp_path, monkeypatch):
    """A kill during a checkpoint save leaves temporary files (``.<name>.<pid>.<rand>.tmp…``):
    the next start removes them. A kill between ``last.safetensors`` and ``last.json`` leaves the
    model one checkpoint ahead of the record: the next start makes them agree again."""
    from cyclecorr.train import state as st
    from cyclecorr.train.loop import train

    run = tmp_path / "run"
    cfg = load_config("smoke", ["stage2.iterations=3"])  # saves: stage 1 at 3, 6; stage 2 at 3
    real_write = st.atomic_write_bytes
    writes = []

    def killed(path, data):  # a kill right after the third last.safetensors, before last.json
        if str(path).endswith("last.json"):
            writes.append(path)
            if len(writes) == 3:
                raise KeyboardInterrupt("killed")
        return real_write(path, data)

    monkeypatch.setattr(st, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run)
    monkeypatch.undo()
    ptr = json.loads((run / "last.json").read_text())
    assert (ptr["stage"], ptr["step"]) == (1, 6)  # the record names the last complete save
    assert read_metadata(run / "last.safetensors")["stage"] == 2  # the model went ahead
    assert st.repair_last_model(run, ptr)  # what the next start does
    assert file_sha256(run / "last.safetensors") == ptr["model_sha256"]
    assert not st.repair_last_model(run, ptr)  # agreeing: nothing to do

    # temporaries a killed process (this id runs nothing) left in both folders
    dead = 2 ** 22 + 17
    junk = [run / f".last.json.{dead}.abc123.tmp.json",
            run / "checkpoints" / f".stage1-00000006.safetensors.{dead}.x_y.tmp.safetensors"]
    for p in junk:
        p.write_bytes(b"partial")
    keep = run / f".notes.{dead}.txt"  # not a temporary file's name: left alone
    keep.write_text("mine")
    res = train(cfg, run, resume=True)
    assert not any(p.exists() for p in junk) and keep.exists()
    ptr = json.loads((run / "last.json").read_text())
    assert (ptr["stage"], ptr["step"]) == (2, 3)
    assert file_sha256(run / "last.safetensors") == ptr["model_sha256"]
    assert res.final_model is not None
