"""Build the decoder pack (``assets/demo-smollm2``) from a report's decoder experiment (issue 31).

The report's decoder section (``ttmoe_core/report/decoder.py``, budgets ``full`` / ``full-demo``)
trains TT-LoRA r5 on SmolLM2-135M's q,v for SST-2, MRPC and QNLI at each learning rate of
``decoder_lrs``, under experiment 2's stopping rule, into ``<work>/decoder/experts``. This script
takes them from there; each step is recorded in pack.json ``build`` (``steps``: the command, when):

1. per task, the finished TT-LoRA expert with the best hold-out score (the TRAIN split's) among
   the rates tried (``report.decoder.chosen_rows``, the section's own rule) goes into a new pack
   (``store.build_pack``), with its validation verdict (``experts.pack_entry``);
2. the router, by the shipped recipe on the decoder's frozen states: ``train-router --variant
   ngram --layer 10 --all-rows --cap 8000 --sst2-sentences``. Layer 10 of 30 is the MiniLM
   recipe's layer 2 of 6 at the same fraction of depth (``router_variants.layers_on``, as the
   report's experiment 3 maps it); its decoder table says how the layers compare;
3. ``calibrate-pool``: the out-of-pool detector;
4. ``eval-moe --save``: routing accuracy and mixture vs each expert alone, into pack.json.

    OMP_NUM_THREADS=1 python scripts/build_decoder_pack.py --work-dir reports/full-demo-2.work \\
        --out assets/demo-smollm2 --data-dir /work/shared/datasets [--dry-run]

``--dry-run`` prints the chosen experts and the commands without writing anything. The steps
after the first are the CLI's own commands, run one after another (hours on a CPU for the
router's 8,000 rows a task through 10 decoder layers); a failed step stops the build and leaves
the pack with the steps done so far recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttmoe_core import experts, store, tasks  # noqa: E402
from ttmoe_core.report import decoder  # noqa: E402

TASKS = ("sst2", "qnli", "mrpc")
LAYER = 10


def finished_tt_lora(work: Path, task: str, seed: int = 0) -> list[Path]:
    """The finished TT-LoRA r5 expert folders of ``task`` in ``work``'s decoder part (one per
    rate tried; a folder counts once its training record sits beside it)."""
    folder = work / decoder.FOLDER / "experts"
    names = [f"{task}-tt-lora-seed{seed}", *(p.name for p in folder.glob(f"{task}-tt-lora-r5-lr*-seed{seed}"))]
    return sorted(folder / n for n in set(names)
                  if (folder / n).is_dir() and (folder / f"{n}.training.json").is_file())


def choose(work: Path, task_names: list[str], seed: int = 0) -> dict[str, Path]:
    """Per task, the folder of the TT-LoRA expert with the best hold-out score of the task's
    primary metric; SystemExit naming the tasks without a finished run."""
    rows = []
    for task in task_names:
        for path in finished_tt_lora(work, task, seed):
            expert = store.load_expert(path)
            rows.append({"task": task, "method": "tt-lora", "metric": tasks.primary_metric(task),
                         "holdout": {k.removeprefix("holdout_"): v for k, v in expert.metrics.items()
                                     if k.startswith("holdout_")}, "folder": path})
    chosen = decoder.chosen_rows(rows)
    missing = [t for t in task_names if t not in chosen]
    if missing:
        raise SystemExit(f"no finished TT-LoRA expert in {work / decoder.FOLDER / 'experts'} for "
                         f"{', '.join(missing)}: let the report's decoder experiment run on")
    return {task: chosen[task]["folder"] for task in task_names}


def assemble(out: Path, chosen: dict[str, Path], command: str) -> dict:
    """A new pack at ``out`` of the chosen experts (named by their task), its build recorded."""
    loaded = [store.load_expert(path) for path in chosen.values()]
    build = {"command": command,
             "experts_from": {e.name: f"{p.parent.parent.parent.name}/{decoder.FOLDER}/experts/{p.name}"
                              for e, p in zip(loaded, chosen.values())},
             "lr": {e.name: e.config.lr for e in loaded},
             "holdout": {e.name: {k.removeprefix("holdout_"): v for k, v in e.metrics.items()
                                  if k.startswith("holdout_")} for e in loaded},
             "chosen_by": "the best hold-out score (TRAIN split) among the learning rates tried",
             "steps": [{"command": "store.build_pack (this script)", "finished": _now()}]}
    store.build_pack(out, loaded, extra={"build": build,
                                         "validation": {e.name: experts.pack_entry(e) for e in loaded}})
    return build


def cli_steps(pack: Path, layer: int, data_dir: Path | None) -> list[list[str]]:
    """The CLI commands after the experts are in: router (shipped recipe), detector, evaluation."""
    data = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return [["train-router", "--pack", str(pack), "--variant", "ngram", "--layer", str(layer), "--all-rows",
             "--cap", "8000", "--sst2-sentences", *data],
            ["calibrate-pool", "--pack", str(pack), *data],
            ["eval-moe", "--pack", str(pack), "--save", *data]]


def record(pack: Path, command: str) -> None:
    """Append a finished step to pack.json ``build.steps`` (the pack changes in one step)."""
    def write(folder: Path, _names) -> None:
        manifest = store.read_json(folder / store.PACK_FILE, "pack")
        build = manifest.get("build") or {}
        build["steps"] = [*build.get("steps", []), {"command": command, "finished": _now()}]
        store.write_json(folder / store.PACK_FILE, {**manifest, "build": build})

    store.update_pack(pack, write)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="the report's work folder")
    parser.add_argument("--out", type=Path, default=Path("assets/demo-smollm2"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--layer", type=int, default=LAYER, help="the router's layer (of 30)")
    parser.add_argument("--seed", type=int, default=0, help="the report's seed of the experts")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the choice and the commands only")
    args = parser.parse_args(argv)
    chosen = choose(args.work_dir, args.tasks.split(","), args.seed)
    steps = cli_steps(args.out, args.layer, args.data_dir)
    for task, path in chosen.items():
        print(f"{task}: {path}")
    for step in steps:
        print("python -m ttmoe_core " + " ".join(step))
    if args.dry_run:
        return 0
    assemble(args.out, chosen, "python scripts/build_decoder_pack.py " + " ".join(argv or sys.argv[1:]))
    for step in steps:
        subprocess.run([sys.executable, "-m", "ttmoe_core", *step], check=True)
        record(args.out, "python -m ttmoe_core " + " ".join(step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
