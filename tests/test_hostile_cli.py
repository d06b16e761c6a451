"""Commands refuse before they write (issue 33): settings the store would refuse are refused
before any training, a held --out is refused at once, --overwrite replaces only what this
project wrote, and a 50 MB input line is cut before tokenising."""

from __future__ import annotations

import threading

import pytest

from tests.tinymodels import SAMPLES
from ttmoe_core import cli
from ttmoe_core.files import locks


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag, value, field", [("--lr", "1e6", "lr"), ("--alpha", "1e7", "alpha"),
                                                ("--train-limit", "10000000000000", "train_limit")])
def test_settings_the_store_refuses_are_refused_before_training(capsys, tmp_path, flag, value,
                                                                field):
    out = tmp_path / "e"
    code, _, err = run_cli(capsys, "train-expert", "--task", "sst2", "--out", out, flag, value,
                           "--data-dir", SAMPLES, "--max-steps", "1")
    assert code == cli.EXIT_USAGE and field in err and "nothing is trained" in err
    assert not out.exists()


def test_a_held_out_folder_is_refused_at_once(capsys, tmp_path):
    out = tmp_path / "e"
    held, release = threading.Event(), threading.Event()

    def other_command() -> None:
        with locks.locked(out):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_command)
    thread.start()
    held.wait(10)
    try:
        code, _, err = run_cli(capsys, "train-expert", "--task", "sst2", "--out", out,
                               "--data-dir", SAMPLES, "--max-steps", "1")
    finally:
        release.set()
        thread.join()
    assert code == cli.EXIT_USAGE and "being written by another command" in err
    assert not out.exists()


def test_full_finetune_overwrite_never_replaces_an_unrelated_file(capsys, tmp_path):
    other = tmp_path / "results.csv"
    other.write_text("a,b\n1,2\n")
    code, _, err = run_cli(capsys, "full-finetune", "--task", "sst2", "--out", other, "--overwrite",
                           "--data-dir", SAMPLES, "--max-steps", "1")
    assert code == cli.EXIT_USAGE and "not a full fine-tuning record" in err
    assert other.read_text() == "a,b\n1,2\n"
