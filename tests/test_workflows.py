"""services.workflows: an upload's seeded 80/20 split, reading an upload, the app's Train buttons."""

from __future__ import annotations

import pytest
from test_jobs import _expert

from ttmoe_core import store, tasks
from ttmoe_core.errors import ConfigError, DataError
from ttmoe_core.services import jobs, workflows
from ttmoe_core.services.workspace import Workspace


def _data(rows: int) -> tasks.TaskData:
    return tasks.TaskData(task="mine", split="train", texts=[f"text {i}" for i in range(rows)],
                          text_pairs=None, labels=[i % 2 for i in range(rows)],
                          label_names=("no", "yes"), source="mine.csv")


def test_the_upload_split_is_seeded_disjoint_and_whole():
    data = _data(23)
    train, valid = workflows.split_upload(data)
    assert (len(train), len(valid)) == (18, 5)                    # round(0.8 * 23)
    assert set(train.texts).isdisjoint(valid.texts)
    assert sorted(train.texts + valid.texts) == sorted(data.texts)
    again = workflows.split_upload(data)
    assert (again[0].texts, again[1].texts) == (train.texts, valid.texts)   # same seed, same rows
    other = workflows.split_upload(data, seed=1)
    assert other[0].texts != train.texts
    assert train.texts == sorted(train.texts, key=data.texts.index)         # file order kept
    assert "seeded 80/20 split (seed 0)" in train.source and train.source.endswith("first part")


def test_read_upload_names_the_file_and_refuses_too_few_rows():
    content = "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(10))
    data, train, valid = workflows.read_upload("mine.csv", content.encode())
    assert (len(data), len(train), len(valid)) == (10, 8, 2)
    with pytest.raises(DataError, match="mine.csv has 3 rows: at least 5"):
        workflows.read_upload("mine.csv", b"text,label\na,0\nb,1\nc,0\n")
    with pytest.raises(DataError) as caught:
        workflows.read_upload("broken.csv", b"no such columns\n1\n")
    assert "broken.csv" in str(caught.value)


def test_start_training_checks_the_settings_before_loading_the_model(tmp_path):
    registry = jobs.JobRegistry()
    loaded = []
    with pytest.raises(ConfigError):
        workflows.start_training(registry, "me", {"task": "sst2", "steps": 0},
                            lambda: loaded.append(1), Workspace(tmp_path), "x")
    assert loaded == [] and registry.list("me") == []


def test_start_training_submits_one_labelled_job(tmp_path):
    registry = jobs.JobRegistry()
    ws = Workspace(tmp_path)
    store.save_expert(_expert("x"), tmp_path / "x")
    job = workflows.start_training(registry, "me", {"task": "sst2", "steps": 3}, lambda: None, ws, "x")
    assert job.wait(30) and job.status == "failed" and "already exists" in job.error
    assert registry.list("me") == [(job, "x (sst2, tt-lora, 3 steps)")]


def test_pull_job_reports_its_steps_and_fails_in_one_line(tmp_path, monkeypatch):
    """The Playground's pull button runs ``models pull`` as a job: the embedded model needs no
    download (its path comes back at once); an unknown name fails the job with one line."""
    from ttmoe_core.base import sources
    from ttmoe_core.services import JobRegistry, pack_base_model, start_model_pull

    monkeypatch.setenv("TTMOE_MODELS", str(tmp_path / "models"))
    registry = JobRegistry()
    job = start_model_pull(registry, "me", "all-minilm-l6-v2")
    job.wait(60)
    assert job.status == "done" and job.result["path"] == str(sources.embedded_path())
    assert any("nothing to pull" in e.get("stage", "") for e in job.events)
    bad = start_model_pull(registry, "me", "no-such-model")
    bad.wait(60)
    assert bad.status == "failed" and "unknown model 'no-such-model'" in bad.error
    assert pack_base_model(tmp_path / "not-a-pack") == {"name": None, "ready": True,
                                                         "command": None}
