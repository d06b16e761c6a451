"""Commands refuse before they write (issue 33): settings the store would refuse are refused
before any training, a held --out is refused at once, --overwrite replaces only what this
project wrote, and a 50 MB input line is cut before tokenising."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.threads import held_elsewhere
from tests.tinymodels import SAMPLES
from ttmoe_core import cli


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
    with held_elsewhere(out):                            # another command writes it
        code, _, err = run_cli(capsys, "train-expert", "--task", "sst2", "--out", out,
                               "--data-dir", SAMPLES, "--max-steps", "1")
    assert code == cli.EXIT_USAGE and "being written by another command" in err
    assert not out.exists()


def test_full_finetune_overwrite_never_replaces_an_unrelated_file(capsys, tmp_path):
    other = tmp_path / "results.csv"
    other.write_text("a,b\n1,2\n")
    code, _, err = run_cli(capsys, "full-finetune", "--task", "sst2", "--out", other, "--overwrite",
                           "--data-dir", SAMPLES, "--max-steps", "1")
    assert code == cli.EXIT_USAGE and "not a full fine-tuning record" in err
    assert other.read_text() == "a,b\n1,2\n"


def test_a_model_folder_s_own_code_never_runs_even_when_a_terminal_answers_yes(tmp_path):
    """``config.json`` with an ``auto_map``: transformers asks "run the custom code? [y/N]" on a
    terminal; the engine passes trust_remote_code=False, so a y typed there changes nothing."""
    import json
    import os
    import pty
    import subprocess
    import sys
    import time

    folder, marker = tmp_path / "model", tmp_path / "ran.txt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "ttmoe-evil", "hidden_size": 8,
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n"
                                    "    model_type = 'ttmoe-evil'\n")
    code = ("from ttmoe_core.base.backbone import load_backbone\n"
            f"try:\n    load_backbone({str(folder)!r})\n"
            "except Exception as exc:\n    print('REFUSED', type(exc).__name__, exc)\n")
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave,
                             stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output = b""
    deadline = time.time() + 120
    while child.poll() is None and time.time() < deadline:
        os.write(master, b"y\n")                 # a user who answers yes to every question
        time.sleep(0.2)
        try:
            import select

            while select.select([master], [], [], 0)[0]:
                output += os.read(master, 65536)
        except OSError:
            break
    child.wait(10)
    os.close(master)
    assert not marker.exists(), output.decode(errors="replace")[-2000:]
    assert b"REFUSED BackboneError" in output and b"custom code" in output, output[-2000:]
