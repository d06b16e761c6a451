"""Every page of the app under streamlit's AppTest: renders, main widgets, one real interaction.

Pages run through app.py (st.navigation) with ``switch_page``. The workspace is a temporary
folder; task data come from the shipped samples. Tests that need the demo pack (assets/demo, or
$TTMOE_PACK) skip when it has not been built.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ttmoe_core import report

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "assets" / "samples"
PACK = Path(os.environ.get("TTMOE_PACK") or REPO_ROOT / "assets" / "demo")
needs_pack = pytest.mark.skipif(not (PACK / "pack.json").is_file(),
                                reason=f"no demo pack at {PACK} (python -m ttmoe_core build-demo)")
PAGES = ["overview", "budget", "compare", "train", "experts", "router", "playground"]
REVIEW = "a gorgeous , witty , seductive movie ."


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setenv("TTMOE_WORKSPACE", str(workspace))
    monkeypatch.setenv("TTMOE_DATA_DIR", str(SAMPLES))
    return workspace


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    if page != "overview":
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def by_label(widgets, prefix: str):
    return next(w for w in widgets if w.label.startswith(prefix))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# ----------------------------------------------------------------------------- every page


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_its_main_widgets(page):
    at = open_page(page)
    assert at.title, "every page has a title"
    if page == "overview":
        assert len(at.page_link) == 5
    elif page == "budget":
        assert button(at, "Paper preset (LLaMA-3.2-1B)")
        assert by_label(at.selectbox, "Method").value == "tt-lora"
        assert metric(at, "Trainable parameters") == "9,360"  # MiniLM q/v, rank 5 (default)
    elif page == "compare":
        assert at.title[0].value == "Compare with the paper" and button(at, "Run the small report")
    elif page == "train":
        assert by_label(at.selectbox, "Task").value == "sst2" and button(at, "Train")
    elif page == "experts":
        assert [h.value for h in at.header][:2] == ["Workspace", "Demo pack"]
    elif page == "router":
        assert "Train a router" in [h.value for h in at.header]
    elif page == "playground" and (PACK / "pack.json").is_file():
        assert at.text_area(key="pg_text").value == REVIEW and button(at, "Route and answer")


@pytest.mark.parametrize("page", ["overview", "experts", "router", "playground"])
def test_missing_demo_pack_gives_a_friendly_note(page, monkeypatch, tmp_path):
    monkeypatch.setenv("TTMOE_PACK", str(tmp_path / "no-pack"))
    at = open_page(page)
    assert any("build-demo" in info.value for info in at.info)
    assert not at.error


@pytest.mark.parametrize("page", ["overview", "router", "playground"])
def test_a_corrupt_pack_is_reported_not_raised(page, monkeypatch, tmp_path):
    pack = tmp_path / "bad-pack"
    (pack / "experts" / "sst2").mkdir(parents=True)
    base = {"name": "tiny", "model_type": "bert", "hidden_size": 8, "num_layers": 1,
            "fingerprint": "f" * 64}
    (pack / "pack.json").write_text(json.dumps({"format": "ttmoe-pack", "experts": ["sst2"],
                                                "base_model": base}))
    (pack / "experts" / "sst2" / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("TTMOE_PACK", str(pack))
    at = open_page(page)
    assert any("sst2" in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("with_report", [True, False])
def test_compare_page_through_the_app_navigation(monkeypatch, tmp_path, with_report):
    """The Compare page as app.py's navigation runs it: a report folder's claims, or the note on
    how to produce one."""
    from test_report import synthetic_results

    folder = tmp_path / "reports"
    if with_report:
        folder.mkdir()
        (folder / report.RESULTS_FILE).write_text(json.dumps(synthetic_results()))
    monkeypatch.setenv("TTMOE_REPORT_DIR", str(folder))
    at = open_page("compare")
    assert at.title[0].value == "Compare with the paper" and not at.error
    if with_report:
        assert metric(at, "Paper's claims that hold here") == "6 of 7"   # the synthetic decoder section holds
        shown = "\n".join(m.value for m in at.markdown)
        assert all(report.SECTION_TITLES[name] in shown for name in report.SECTIONS)
    else:
        assert any("--budget full" in i.value for i in at.info)
    assert not button(at, "Run the small report").disabled


# ----------------------------------------------------------------------------- workspace root


def saving_to(at: AppTest) -> str:
    return next(c.value for c in at.sidebar.caption if c.value.startswith("Saving to"))


def test_the_workspace_root_is_the_servers(_env, monkeypatch, tmp_path):
    """The root comes from the server (the variable, or ``--workspace`` after ``--``, which wins);
    the sidebar offers no box that takes a path."""
    at = open_page("train")
    assert saving_to(at) == f"Saving to `{_env}`"
    assert not any(t.label == "Workspace folder" for t in at.text_input)
    assert by_label(at.sidebar.selectbox, "Workspace folder").options == ["(top level)",
                                                                          "New sub-folder…"]
    flagged = tmp_path / "from-flag"
    monkeypatch.setattr("sys.argv", ["app.py", "--workspace", str(flagged)])
    at = open_page("train")
    assert saving_to(at) == f"Saving to `{flagged}`"
    assert any(str(flagged / "sst2") in c.value for c in at.caption)


@pytest.mark.parametrize("name, ok", [("alice", True), ("../outside", False), ("/etc", False),
                                      ("packs", False), ("sst2", False), (".hidden", False),
                                      ("link", False)])
def test_a_visitor_chooses_only_a_sub_folder_inside_the_root(_env, tmp_path, name, ok):
    from test_jobs import _expert

    from ttmoe_core import store

    store.save_expert(_expert("sst2"), _env / "sst2")         # an expert, not a sub-folder
    (tmp_path / "elsewhere").mkdir()
    (_env / "link").symlink_to(tmp_path / "elsewhere")
    at = open_page("experts")
    by_label(at.sidebar.selectbox, "Workspace folder").set_value("New sub-folder…")
    at.run()
    at.sidebar.text_input[0].set_value(name)
    at.run()
    assert not at.exception
    if ok:
        assert saving_to(at) == f"Saving to `{_env / name}`" and not at.error
        # the new sub-folder stays chosen, and is offered once it exists
        at.run()
        assert by_label(at.sidebar.selectbox, "Workspace folder").value == name
        assert saving_to(at) == f"Saving to `{_env / name}`" and not at.sidebar.text_input
        (_env / name).mkdir()
        assert name in open_page("experts").sidebar.selectbox[0].options
    else:
        assert saving_to(at) == f"Saving to `{_env}`"
        assert any("workspace folder" in e.value for e in at.sidebar.error), [
            e.value for e in at.error]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "workspace"]
    assert list((tmp_path / "elsewhere").iterdir()) == []


# ----------------------------------------------------------------------------- budget


def test_budget_full_fine_tuning_of_llama_is_shown_whole():
    at = open_page("budget")
    button(at, "Paper preset (LLaMA-3.2-1B)").click()
    at.run()
    by_label(at.selectbox, "Method").set_value("full")
    at.run()
    assert not at.exception and not at.error
    assert metric(at, "Trainable parameters") == "1,235,814,400"
    table = at.dataframe[-1].value
    assert 1235814400 in list(table["trainable parameters"])


def test_budget_paper_preset_gives_the_papers_counts():
    at = open_page("budget")
    button(at, "Paper preset (LLaMA-3.2-1B)").click()
    at.run()
    assert not at.exception and not at.error
    assert metric(at, "Trainable parameters") == "33,920"
    assert metric(at, "LoRA r16, same targets") == "1,703,936"
    assert by_label(at.text_input, "TT shape of q_proj").value == "16,8,4,4,4,4,8,16"


def test_budget_shows_what_a_setting_measured_in_the_committed_report():
    """MiniLM, LoRA r16 on q,v is experiment 2's LoRA: its committed validation metrics show
    beside the count; LoRA r3 was never trained and the page says so."""
    results = report.read_results(REPO_ROOT / "reports")
    expected = report.measured(results, "all-minilm-l6-v2", "lora", 16, ["query", "value"])
    assert expected                                        # the committed report holds it
    at = open_page("budget")
    by_label(at.selectbox, "Preset").set_value("all-minilm-l6-v2")
    at.run()
    by_label(at.selectbox, "Method").set_value("lora")
    at.run()
    by_label(at.number_input, "LoRA rank").set_value(16)
    at.run()
    assert not at.exception and not at.error
    shown = "\n".join(m.value for m in at.markdown)
    assert "What this setting measured" in shown
    for entry in expected:
        assert f"{entry['task']} {entry['metric']} {entry['mean']:.3f}" in shown
    by_label(at.number_input, "LoRA rank").set_value(3)
    at.run()
    assert any("No committed measurement of this setting" in c.value for c in at.caption)


@pytest.mark.parametrize("shape, message", [("16,8,4", "does not fit"),
                                            ("8,8,x", "not a list of integers")])
def test_budget_bad_tt_shape_shows_an_error(shape, message):
    at = open_page("budget")
    by_label(at.text_input, "TT shape of query").set_value(shape)
    at.run()
    assert not at.exception
    assert any(message in e.value for e in at.error)
    assert not any(m.label == "Trainable parameters" for m in at.metric)


@pytest.mark.parametrize("content, message", [(b"{not json", "not valid JSON"),
                                              (b'{"model_type": "gpt2"}', "unsupported model_type"),
                                              (b"\xff\xfe\x00", "not UTF-8")])
def test_budget_bad_config_upload_shows_an_error(content, message):
    at = open_page("budget")
    by_label(at.radio, "Model from").set_value("Upload config.json")
    at.run()
    at.file_uploader[0].upload("config.json", content, "application/json")
    at.run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_budget_uploaded_config_is_counted():
    config = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
              "intermediate_size": 1536, "num_attention_heads": 12, "vocab_size": 30522,
              "max_position_embeddings": 512, "type_vocab_size": 2}
    at = open_page("budget")
    by_label(at.radio, "Model from").set_value("Upload config.json")
    at.run()
    at.file_uploader[0].upload("config.json", json.dumps(config).encode(), "application/json")
    at.run()
    assert not at.exception and not at.error
    assert metric(at, "Trainable parameters") == "9,360"


# ----------------------------------------------------------------------------- train


def wait_for_success(at: AppTest, text: str, seconds: float, what: str) -> None:
    """Rerun ``at`` until a success message holds ``text`` (no error or exception meanwhile)."""
    deadline = time.time() + seconds
    while not any(text in s.value for s in at.success):
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert time.time() < deadline, f"{what} did not finish in time"
        time.sleep(0.5)
        at.run()


def start_training(at: AppTest, steps: int) -> None:
    """Press Train on the Train page for ``steps`` steps of batch 4, 32 tokens, 16 validation rows."""
    by_label(at.number_input, "Steps").set_value(steps)
    by_label(at.number_input, "Batch size").set_value(4)
    by_label(at.number_input, "Max length").set_value(32)
    by_label(at.number_input, "Validation rows").set_value(16)
    at.run()
    button(at, "Train").click()
    at.run()


@pytest.mark.slow
def test_train_page_two_step_run_lands_in_the_workspace(_env):
    at = open_page("train")
    by_label(at.number_input, "Evaluate every").set_value(1)       # early-stopping settings
    by_label(at.number_input, "Patience").set_value(7)
    start_training(at, 2)
    wait_for_success(at, "Saved expert", 240, "the training run")
    folder = _env / "sst2"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["training"]["steps"] == 2 and saved["training"]["batch_size"] == 4
    assert saved["training"]["eval_every"] == 1 and saved["training"]["patience"] == 7
    assert saved["metrics"]["evaluations"] == 2                      # steps 1 and 2 on the hold-out
    assert saved["data"]["eval_rows"] == 16
    assert 0.0 <= float(metric(at, "Validation accuracy")) <= 1.0
    # validation scores only: no hold-out score or CPU time dressed as a validation metric
    assert {m.label for m in at.metric} == {"Validation accuracy", "Training time",
                                            "Trainable parameters"}
    # the new expert is listed on the Experts page
    experts_page = open_page("experts")
    assert "workspace / sst2" in by_label(experts_page.selectbox, "Expert").options


@pytest.mark.parametrize("name, content, message", [
    ("reviews.csv", b"\xff\xfetext,label\n", "not UTF-8"),
    ("reviews.csv", b"sentence,label\nfine,1\n", "no `text` column"),
    ("reviews.jsonl", b'{"text": "a", "label": 0}\nnot json\n', "line 2 is not valid JSON"),
])
def test_train_bad_upload_shows_the_data_error(name, content, message):
    at = open_page("train")
    by_label(at.radio, "Training data").set_value("Upload a CSV/JSONL file")
    at.run()
    at.file_uploader[0].upload(name, content, "text/plain")
    at.run()
    assert not at.exception
    assert any(message in e.value and name in e.value for e in at.error), [e.value for e in at.error]
    assert button(at, "Train").disabled


def test_train_good_upload_is_split_for_training():
    rows = "\n".join(f"review number {i},{'positive' if i % 2 else 'negative'}" for i in range(10))
    at = open_page("train")
    by_label(at.radio, "Training data").set_value("Upload a CSV/JSONL file")
    at.run()
    at.file_uploader[0].upload("reviews.csv", f"text,label\n{rows}\n".encode(), "text/csv")
    at.run()
    assert not at.exception and not at.error
    assert any("8 for training, 2 for validation" in s.value for s in at.success)
    assert not button(at, "Train").disabled


def test_a_job_belongs_to_the_session_that_started_it():
    """Two browser sessions: only the one that started a run sees it and can cancel it."""
    from pages import common

    mine, other = open_page("train"), open_page("train")
    owner = mine.session_state[common.SESSION_KEY]
    assert owner != other.session_state[common.SESSION_KEY]
    gate = threading.Event()

    def fake_training(job):
        job.report(stage="training", step=1, total=4, loss=0.5, examples_per_s=10.0, elapsed_s=0.1)
        gate.wait(60)
        raise RuntimeError("training cancelled at step 1 of 4")

    job = common.job_registry().submit(owner, "train", "fake run", fake_training)
    try:
        for at in (mine, other):      # even knowing the job's id, the other session cannot reach it
            at.session_state["train_job"] = job.id
            at.run()
            assert not at.exception, [e.value for e in at.exception]
        assert any(b.label == "Cancel training" for b in mine.button)
        assert button(mine, "Train").disabled          # while this session's run is active
        assert not any(b.label == "Cancel training" for b in other.button)
        assert not any(e.label.startswith("Runs in this session") for e in other.expander)
        assert not button(other, "Train").disabled       # the other session may train at once
        button(mine, "Cancel training").click()
        mine.run()
        assert job.cancelled()
    finally:
        gate.set()
        job.wait(10)


@needs_pack
def test_two_sessions_train_and_predict_at_once(_env):
    """One session trains (a background job) while another routes a text on the Playground: both
    succeed, the answer equals the one given when nothing else runs, and each session sees only
    its own jobs."""
    from pages import common

    player = open_page("playground")            # loads the shared mixture first
    trainer = open_page("train")
    start_training(trainer, 12)
    player.text_area(key="pg_text").set_value(REVIEW)
    button(player, "Route and answer").click()
    player.run()                                # while the training job runs
    training = common.job_registry().running(trainer.session_state[common.SESSION_KEY])
    assert not player.exception and not player.error, [e.value for e in player.error]
    assert len(training) == 1, "the answer came while the other session's training ran"
    during = (metric(player, "Chosen expert"), metric(player, "Answer"))
    wait_for_success(trainer, "Saved expert", 240, "the training run")
    assert (_env / "sst2" / "adapter_config.json").is_file()
    button(player, "Route and answer").click()
    player.run()
    assert (metric(player, "Chosen expert"), metric(player, "Answer")) == during == (
        "sst2", metric(player, "Answer"))
    player.switch_page("pages/train.py")
    player.run()
    registry = common.job_registry()
    mine = trainer.session_state[common.SESSION_KEY]
    theirs = player.session_state[common.SESSION_KEY]
    assert [label for _, label in registry.list(mine)] == ["sst2 (sst2, tt-lora, 12 steps)"]
    assert registry.list(theirs) == []
    assert not any(b.label == "Cancel training" for b in player.button)
    assert not any(e.label.startswith("Runs in this session") for e in player.expander)


# ----------------------------------------------------------------------------- experts


def test_experts_page_lists_a_corrupt_expert_with_its_reason(_env):
    broken = _env / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"format": "ttmoe-expert"')
    foreign = _env / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text('{"format": "peft-lora"}')
    (_env / "not-an-expert").mkdir()  # folders without expert files are ignored
    at = open_page("experts")
    warnings = [w.value for w in at.warning]
    assert any("broken" in w and "not valid JSON" in w for w in warnings), warnings
    assert any("foreign" in w and "not a TT-LoRA MoE expert config" in w for w in warnings)
    assert not any("not-an-expert" in w for w in warnings)


def _experts_page_on_alpha(workspace):
    """The Experts page with a saved workspace expert 'alpha' selected."""
    from test_jobs import _expert

    from ttmoe_core import store

    store.save_expert(_expert("alpha"), workspace / "alpha")
    at = open_page("experts")
    by_label(at.selectbox, "Expert").set_value("workspace / alpha")
    at.run()
    assert not at.exception and not at.error
    return at


def test_experts_page_renames_and_deletes_a_workspace_expert(_env):
    from ttmoe_core import store

    at = _experts_page_on_alpha(_env)
    assert metric(at, "Adapter parameters") == "40"   # cores of 2,4 | 4,2 at rank 2
    by_label(at.text_input, "New name").set_value("beta")
    at.run()
    button(at, "Rename").click()
    at.run()
    assert not at.exception and not at.error
    assert not (_env / "alpha").exists() and store.load_expert(_env / "beta").name == "beta"
    by_label(at.selectbox, "Expert").set_value("workspace / beta")
    at.run()
    assert button(at, "Delete").disabled  # not before the confirmation
    by_label(at.checkbox, "Yes, delete").check()
    at.run()
    button(at, "Delete").click()
    at.run()
    assert not at.exception and not (_env / "beta").exists()


# ----------------------------------------------------------------------------- router


@needs_pack
def test_router_page_shows_the_stored_router_metrics():
    stored = json.loads((PACK / "router_config.json").read_text())["metrics"]
    at = open_page("router")
    assert metric(at, "Routing accuracy") == f"{stored['accuracy']:.1%}"
    assert metric(at, "Held-out inputs") == f"{stored['rows']:,}"
    toggle = at.toggle[0]
    assert toggle.label == "Row-normalised" and toggle.value
    toggle.set_value(False)
    at.run()
    assert not at.exception


@needs_pack
@pytest.mark.slow
def test_router_page_trains_and_saves_a_router_for_two_experts(_env):
    at = open_page("router")
    experts = by_label(at.multiselect, "Experts")
    experts.set_value(experts.options[:2])
    by_label(at.multiselect, "Base layer").set_value([0, 1])
    by_label(at.number_input, "Training inputs per task").set_value(20)
    by_label(at.number_input, "Held-out inputs per task").set_value(10)
    by_label(at.number_input, "Epochs").set_value(3)
    by_label(at.text_input, "New pack name").set_value("two")
    at.run()
    button(at, "Train router").click()
    at.run()
    wait_for_success(at, "Trained 2 router(s)", 180, "router training")
    layers = next(d.value for d in at.dataframe if "layer k" in d.value.columns)
    assert list(layers["layer k"]) == [0, 1]
    assert layers["held-out accuracy"].between(0, 1).all()
    button(at, "Save this router to the pack").click()
    at.run()
    assert not at.exception and not at.error
    pack = _env / "packs" / "two"
    saved = json.loads((pack / "router_config.json").read_text())
    assert saved["experts"] == json.loads((pack / "pack.json").read_text())["experts"]
    assert set(saved["metrics"]["per_layer"]) == {"0", "1"} and saved["metrics"]["rows"] == 20
    # the new pack can be chosen on the playground
    playground = open_page("playground")
    assert "workspace pack: two" in by_label(playground.selectbox, "Pack").options


# ----------------------------------------------------------------------------- playground


def _routed_review():
    """The Playground after routing and answering the review REVIEW with the demo pack."""
    at = open_page("playground")
    at.text_area(key="pg_text").set_value(REVIEW)
    button(at, "Route and answer").click()
    at.run()
    return at


@needs_pack
@pytest.mark.slow
def test_playground_routes_a_review_to_sst2():
    at = _routed_review()
    assert not at.exception and not at.error
    assert metric(at, "Chosen expert") == "sst2"
    assert metric(at, "Answer") in ("positive", "negative")
    # oracle: force another expert, compare side by side
    at.toggle(key="pg_oracle").set_value(True)
    at.run()
    forced = next(n for n in by_label(at.selectbox, "Forced expert").options if n != "sst2")
    by_label(at.selectbox, "Forced expert").set_value(forced)
    button(at, "Route and answer").click()
    at.run()
    cards = [m.value for m in at.markdown if "answers" in m.value]
    assert any("**Routed**" in c and "sst2" in c for c in cards)
    assert any(f"**Forced: {forced}**" in c for c in cards)
    # a changed input marks the answer stale
    at.text_area(key="pg_text").set_value("an entirely different review")
    at.run()
    assert any("this answer is for the previous one" in w.value for w in at.warning)
    # empty text: a message, no call
    at.text_area(key="pg_text").set_value("   ")
    button(at, "Route and answer").click()
    at.run()
    assert any("Type a text first" in e.value for e in at.error)


@needs_pack
@pytest.mark.slow
def test_playground_batch_answers_every_line_in_one_call():
    at = open_page("playground")
    at.text_area(key="pg_batch").set_value(f"{REVIEW}\n\nIs it raining? ||| It rains today.\n")
    button(at, "Answer all").click()
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["text"]) == [REVIEW, "Is it raining?"]
    assert list(table["second text"]) == ["", "It rains today."]
    assert table["expert"].iloc[0] == "sst2"
    at.text_area(key="pg_batch").set_value(" ||| only a pair")
    button(at, "Answer all").click()
    at.run()
    assert any("no text before" in e.value for e in at.error)


# ----------------------------------------------------------------------------- try an expert


def test_training_phases_are_said_from_the_first_second():
    from pages.train import phase

    events = [{"stage": "loading data"},
              {"stage": "training", "step": 0, "total": 5, "train_rows": 40},
              {"stage": "training", "step": 2, "total": 5, "loss": 0.69, "examples_per_s": 12.0},
              {"stage": "evaluating", "rows": 16}, {"stage": "saving", "path": "/w/sst2"}]
    said = [phase(events[:n]) for n in range(len(events) + 1)]
    assert [text.split(":")[0].split(" ")[0] for _, text in said] == [
        "Starting", "Preparing", "Preparing", "Step", "Evaluating", "Saving"]
    assert said[3] == (0.4, "Step 2 of 5 · loss 0.6900 · 12.0 examples/s")


def test_try_it_on_the_experts_page_opens_the_playground_with_that_expert(_env):
    at = _experts_page_on_alpha(_env)
    button(at, "Try it").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Playground"
    assert at.radio(key="pg_source").value == "Chosen experts (no pack)"
    assert at.multiselect(key="pg_expert_dirs").value == [str(_env / "alpha")]
    # this toy expert was made for another base model: said in one line, not raised
    assert [e.value for e in at.error] and "loading the experts" in at.error[0].value


@needs_pack
@pytest.mark.slow
def test_playground_serves_chosen_experts_without_a_pack():
    at = open_page("playground")
    at.radio(key="pg_source").set_value("Chosen experts (no pack)")
    at.run()
    dirs = at.multiselect(key="pg_expert_dirs")
    assert "sst2 (sst2, demo pack)" in dirs.options
    dirs.set_value([str(PACK / "experts" / "sst2")])
    at.run()
    at.text_area(key="pg_text").set_value(REVIEW)
    button(at, "Answer").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert metric(at, "Chosen expert") == "sst2" and metric(at, "Answer") in ("positive", "negative")
    assert metric(at, "Router confidence") == "– (no router)"


@needs_pack
@pytest.mark.slow
def test_playground_says_the_router_confidence_in_words():
    at = _routed_review()
    words = [m.value for m in [*at.markdown, *at.warning] if "The router is" in m.value]
    assert len(words) == 1 and metric(at, "Router confidence").endswith("%")


@needs_pack
@pytest.mark.slow
def test_playground_says_when_no_expert_fits_and_abstains():
    at = open_page("playground")
    at.toggle(key="pg_abstain").set_value(True)
    at.text_area(key="pg_text").set_value("Robin went to school with Jan and went to her first "
                                          "class with her as well. What will Robin want to do next?")
    at.text_area(key="pg_pair").set_value("(A) go home (B) sleep (C) work in class")   # socialiqa
    button(at, "Route and answer").click()
    at.run()
    assert not at.exception
    assert metric(at, "In the pool") == "no"
    assert metric(at, "Chosen expert") == "none (abstained)"
    assert any("No expert in this pack fits this input" in e.value for e in at.error)
    # the default answers anyway and only flags the input
    at.toggle(key="pg_abstain").set_value(False)
    button(at, "Route and answer").click()
    at.run()
    assert metric(at, "In the pool") == "no" and metric(at, "Chosen expert") != "none (abstained)"
    # an in-pool review: no such words
    at.text_area(key="pg_text").set_value(REVIEW)
    at.text_area(key="pg_pair").set_value("")
    button(at, "Route and answer").click()
    at.run()
    assert metric(at, "In the pool") == "yes"
    assert not any("No expert in this pack fits" in e.value for e in at.error)


def test_decision_words_for_out_of_pool_and_unsure_choices():
    from ttmoe_core.routing.detector import calibrated
    from ttmoe_core.services.views import decision_words

    probs = {"mnli": 0.7, "rte": 0.3}
    assert calibrated(probs, 1.0) == pytest.approx(probs)
    flat = calibrated(probs, 2.44)                      # T > 1 flattens: 0.586 / 0.414
    assert flat["mnli"] == pytest.approx(0.586, abs=1e-3) and sum(flat.values()) == pytest.approx(1)
    level, words = decision_words({"in_pool": False, "pool_score": -3.2, "router_probs": {"a": 1.0}}, 2.0)
    assert level == "error" and words.startswith("No expert in this pack fits this input")
    level, words = decision_words({"in_pool": True, "pool_score": 1.0, "router_probs": probs}, 2.44)
    assert level == "warning" and "The router is unsure between mnli and rte" in words
    assert decision_words({"in_pool": True, "pool_score": 1.0, "router_probs": probs}, 1.0) is None
    assert decision_words({"in_pool": None, "pool_score": None, "router_probs": {}}, None) is None


def test_playground_offers_to_pull_a_packs_base_model(monkeypatch, tmp_path):
    """A pack built on a registered model that is not pulled yet (the SmolLM2 demo on a fresh
    machine): the Playground names the command and offers the pull as a background job."""
    pack = tmp_path / "decoder-pack"
    pack.mkdir()
    manifest = json.loads((REPO_ROOT / "assets" / "demo" / "pack.json").read_text())
    manifest["base_model"] = {**manifest["base_model"], "name": "smollm2-135m",
                              "model_type": "llama"}
    (pack / "pack.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("TTMOE_PACK", str(pack))
    monkeypatch.setenv("TTMOE_MODELS", str(tmp_path / "no-models"))
    at = open_page("playground")
    assert any("python -m ttmoe_core models pull smollm2-135m" in i.value for i in at.info)
    assert button(at, "Pull smollm2-135m now") is not None
    assert not at.error
