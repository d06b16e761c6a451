"""Does a mixture answer every row as its expert alone? (issue 13's two-expert check on a decoder)

    python studies/mixture_rows.py EXPERT_DIR EXPERT_DIR [--rows 100]

Loads the experts' base model once, builds the router-less mixture of the expert folders, and for
each expert runs ``--rows`` validation rows of its task (seeded sample) three ways: the expert
alone (``experts.predict_logits`` on its own adapted copy of the base model), the mixture forced to
that expert, and the mixture on a batch that interleaves both experts' rows (each row forced to its
own expert), all cut at the mixture's max_length (the experts' longest). Prints one JSON object:
per expert, labels that differ and the largest probability difference between the expert alone
and each mixture run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experts", nargs=2)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()

    import torch

    from ttmoe_core import experts, store, tasks
    from ttmoe_core.base.backbone import load_backbone
    from ttmoe_core.moe import mixture_from_folders

    torch.set_num_threads(1)
    loaded = [store.load_expert(folder) for folder in args.experts]
    base = load_backbone(loaded[0].base.name, device="cpu")
    start = time.perf_counter()
    mixture = mixture_from_folders(args.experts, backbone=base)
    data = {e.name: tasks.load_task(e.config.task, "validation", limit=args.rows, seed=0)
            for e in loaded}
    mixed_texts, mixed_pairs, mixed_names = [], [], []
    for i in range(args.rows):
        for e in loaded:
            d = data[e.name]
            if i < len(d):
                mixed_texts.append(d.texts[i])
                mixed_pairs.append(d.text_pairs[i] if d.text_pairs else None)
                mixed_names.append(e.name)
    interleaved = mixture.predict(mixed_texts, mixed_pairs, expert=mixed_names)
    report = {"base_model": base.info.name, "rows_per_expert": args.rows,
              "max_length": mixture.max_length, "experts": {}}
    for expert in loaded:
        d = data[expert.name]
        pairs = d.text_pairs
        alone = experts.predict_logits(experts.build_expert_model(expert, base), base, d.texts,
                                       pairs, mixture.max_length)
        alone_p = torch.softmax(alone, -1)
        forced = mixture.predict(d.texts, pairs, expert=expert.name)
        mine = [row for row, name in zip(interleaved, mixed_names) if name == expert.name]
        entry = {"task": expert.config.task, "pooling": expert.pooling, "rows": len(d)}
        for label, rows in (("forced", forced), ("interleaved", mine)):
            probs = torch.tensor([[row["label_probs"][n] for n in expert.label_names] for row in rows])
            entry[f"{label}_labels_differing"] = int((probs.argmax(-1) != alone_p.argmax(-1)).sum())
            entry[f"{label}_max_prob_diff"] = float((probs - alone_p).abs().max())
        entry["accuracy_alone"] = float((alone.argmax(-1) == torch.tensor(d.labels)).float().mean())
        report["experts"][expert.name] = entry
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
