"""Data-parallel training through ``accelerate launch``: 2 CPU processes (gloo) take the steps
one process takes with the same global batch and seed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.tinymodels import SAMPLES, decoder_tokenizer, tiny_decoder_model
from ttmoe_core.runtime import distributed, rng


def test_shares_cover_the_batch_once():
    for total in range(0, 12):
        for world in range(1, 5):
            parts = [distributed.share(total, world, r) for r in range(world)]
            rows = [i for start, stop in parts for i in range(start, stop)]
            assert rows == list(range(total))
            sizes = [stop - start for start, stop in parts]
            assert max(sizes) - min(sizes) <= 1


def test_dropout_share_of_a_batch_draws_the_whole_batch_mask():
    """Two processes' shares of a batch get the rows one process's mask gives them, and their
    generators end in the same state as the single process's."""
    x = torch.ones(5, 7)
    one = rng.Dropout(0.5, torch.Generator().manual_seed(3)).train()
    full = one(x)
    parts = []
    for start, stop in ((0, 3), (3, 5)):
        drop = rng.Dropout(0.5, torch.Generator().manual_seed(3)).train()
        with rng.batch_rows(start, stop, 5):
            parts.append(drop(x[start:stop]))
        assert torch.equal(drop.generator.get_state(), one.generator.get_state())
    assert torch.equal(torch.cat(parts), full)
    with pytest.raises(ValueError, match="rows"):
        with rng.batch_rows(0, 2, 5):
            rng.Dropout(0.5).train()(x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """``accelerate launch --num_processes 2 -m ttmoe_core train-expert`` (CPU, gloo) gives the
    weights and loss history of the one-process run with the same global batch (5 rows: shares
    of 3 and 2) and seed, within float tolerance."""
    from safetensors.torch import load_file

    model = tmp_path / "model"
    tiny_decoder_model("llama").save_pretrained(str(model))
    decoder_tokenizer().save_pretrained(str(model))
    common = ["train-expert", "--model", str(model), "--task", "sst2", "--data-dir", str(SAMPLES),
              "--max-steps", "4", "--batch-size", "5", "--max-length", "32", "--train-limit", "20",
              "--eval-limit", "8", "--init", "kaiming", "--device", "cpu", "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    subprocess.run([sys.executable, "-m", "ttmoe_core", *common, "--out", str(tmp_path / "one")],
                   env=env, check=True, capture_output=True, timeout=300)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    done = subprocess.run([*launch, "-m", "ttmoe_core", *common, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    configs = [json.loads((tmp_path / run / "adapter_config.json").read_text())
               for run in ("one", "two")]
    assert [c["data"]["processes"] for c in configs] == [1, 2]
    assert configs[0]["history"][-1]["loss"] == pytest.approx(configs[1]["history"][-1]["loss"],
                                                              rel=1e-5)
    one, two = (load_file(str(next((tmp_path / run).glob("*.safetensors"))))
                for run in ("one", "two"))
    assert one.keys() == two.keys() and len(one) > 2
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    # and they moved from their initial values: the comparison is not between untouched weights
    assert any(float(one[k].abs().max()) > 0 for k in one if k.startswith("head."))
