"""Where the recommender's accuracy comes from: one setting changed at a time, scored on the validation item.

The variants train on one half of a sequence file's users (half "a", chosen by a hash of the user id), so
the other half ("b") stays untouched for an untuned check of the recipe this table picks. Each variant is
a normal `seesku train recommender` run (validation item held out, early stopping on its NDCG@10); the
test item is never scored here. Finished variants are kept, so a stopped ablation resumes where it was.

    python scripts/recommender_ablation.py --data ../shared/data/amazon_beauty/Beauty.txt \
        --runs runs/ablation --report training/reports/recommender [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.recommender.config import RecommenderConfig  # noqa: E402
from training.recommender.data import read_sequence_file  # noqa: E402
from training.recommender.train import train  # noqa: E402

# The previous default, the base everything below is measured against: each variant changes one setting.
OLD_DEFAULT = dict(dim=64, blocks=2, heads=2, dropout=0.3, head="mlp", loss="ce", lr=1e-3, batch=256)
SASREC_SS = dict(
    dim=256,
    blocks=1,
    heads=1,
    dropout=0.2,
    head="none",
    loss="sampled",
    negatives=256,
    negatives_per="batch",
    lr=1e-3,
    batch=128,
)
VARIANTS: dict[str, dict] = {
    "old default (64-d, 2 blocks, MLP head, full CE)": OLD_DEFAULT,
    "old like-for-like best (dropout 0.5, lr 3e-3, batch 128)": {
        **OLD_DEFAULT,
        "dropout": 0.5,
        "lr": 3e-3,
        "batch": 128,
    },
    "old default, 256-d": {**OLD_DEFAULT, "dim": 256},
    "SASRec-SS: 256-d, 1 block, no head, sampled softmax 256": SASREC_SS,
    "SASRec-SS, full CE instead of sampled": {**SASREC_SS, "loss": "ce"},
    "SASRec-SS, 1024 negatives": {**SASREC_SS, "negatives": 1024},
    "SASRec-SS, negatives drawn per position": {**SASREC_SS, "negatives_per": "position"},
    "SASRec-SS, negatives per position, lr 3e-4": {**SASREC_SS, "negatives_per": "position", "lr": 3e-4},
    "SASRec-SS, untied answer table": {**SASREC_SS, "tied": False},
    "SASRec-SS, lr 3e-4": {**SASREC_SS, "lr": 3e-4},
    "SASRec-SS, lr 3e-3": {**SASREC_SS, "lr": 3e-3},
    "SASRec-SS, 64 negatives": {**SASREC_SS, "negatives": 64},
    "SASRec-SS, 128-d": {**SASREC_SS, "dim": 128},
    "SASRec-SS, MLP head": {**SASREC_SS, "head": "mlp"},
    "SASRec-SS, 2 blocks, 2 heads": {**SASREC_SS, "blocks": 2, "heads": 2},
    "SASRec-SS, dropout 0.5": {**SASREC_SS, "dropout": 0.5},
    "SASRec-SS, max length 20": {**SASREC_SS, "max_len": 20},
}


def user_half(user_id: str) -> str:
    return "ab"[hashlib.sha1(user_id.encode()).digest()[0] % 2]


def write_halves(data: Path, folder: Path) -> dict[str, Path]:
    """The sequence file split by user into halves a and b (item ids unchanged)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {half: folder / f"{data.stem}-{half}.txt" for half in "ab"}
    if not all(p.exists() for p in paths.values()):
        lines = {"a": [], "b": []}
        for line in data.read_text().splitlines():
            if line.split():
                lines[user_half(line.split()[0])].append(line)
        for half, path in paths.items():
            path.write_text("\n".join(lines[half]) + "\n")
    return paths


def slug(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def run_variant(name: str, settings: dict, data: Path, runs: Path, max_epochs: int, threads: int = 0) -> dict:
    out = runs / slug(name)
    result_file = out / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    config = replace(
        RecommenderConfig(data=str(data), out=str(out), epochs=max_epochs, patience=4, threads=threads), **settings
    )
    seqs = read_sequence_file(data)
    best = train(
        config, seqs, resume=(out / "last.pt").exists(), log=lambda line: print(f"[{name}] {line}", flush=True)
    )
    history = json.loads((out / "history.json").read_text())
    result = summarise(name, settings, config, best, history)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def summarise(name: str, settings: dict, config, best: Path, history: dict, stopped: bool = False) -> dict:
    scored = [h for h in history["history"] if "val_ndcg@10" in h]
    top = max(scored, key=lambda h: h["val_ndcg@10"])
    return {
        "variant": name,
        "settings": settings,
        "config": asdict(config),
        "checkpoint": str(best),
        "best_epoch": top["epoch"],
        "epochs_run": history["history"][-1]["epoch"],
        "val_hr@10": top["val_hr@10"],
        "val_ndcg@10": top["val_ndcg@10"],
        "seconds_per_epoch": round(sum(h["seconds"] for h in history["history"]) / len(history["history"]), 1),
        "wall_s": history["wall_s"],
        "stopped": stopped,  # interrupted before its early stop: the best so far
    }


def interrupted(name: str, runs: Path) -> dict | None:
    """A variant stopped by hand before its early stop, from its last checkpoint's history."""
    import torch

    last = runs / slug(name) / "last.pt"
    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=False)
    history = {"history": state["history"], "wall_s": sum(h["seconds"] for h in state["history"])}
    config = RecommenderConfig(**state["config"])
    return summarise(name, VARIANTS[name], config, runs / slug(name) / "best.pt", history, stopped=True)


def table(results: list[dict], data: Path) -> str:
    base = next((r for r in results if r["settings"] == OLD_DEFAULT), None)
    lines = [
        f"Validation item of half a of `{data.name}`'s users ({data.stem}-a), held out in training; "
        "full ranking, history excluded. Each run stops after 4 evaluations (every 2 epochs) without a better "
        "NDCG@10. Seconds per epoch are only indicative: two or three runs shared the two cores, one thread each "
        "(the first SASRec-SS run had both to itself).",
        "",
        "| variant | val HR@10 | val NDCG@10 | vs old default | best epoch | s/epoch | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = f" (stopped by hand at epoch {r['epochs_run']})" if r.get("stopped") else ""
        change = f"{r['val_ndcg@10'] / base['val_ndcg@10'] - 1:+.1%}" if base else ""
        lines.append(
            f"| {r['variant']}{note} | {r['val_hr@10']:.4f} | {r['val_ndcg@10']:.4f} | {change} | {r['best_epoch']} | "
            f"{r['seconds_per_epoch']} | {r['wall_s'] / 60:.0f} min |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--report", type=Path, default=ROOT / "training" / "reports" / "recommender")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: every core)")
    parser.add_argument(
        "--only",
        nargs="*",
        help="variant names to run (default: all), in this order; --only alone just writes the table",
    )
    args = parser.parse_args()
    halves = write_halves(args.data, args.runs / "halves")
    names = list(VARIANTS) if args.only is None else args.only
    for name in names:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; known: {list(VARIANTS)}")
    for name in names:
        run_variant(name, VARIANTS[name], halves["a"], args.runs, args.max_epochs, args.threads)
    # The table holds every finished variant, in the order above.
    results = []
    for name in VARIANTS:
        done = args.runs / slug(name) / "result.json"
        result = json.loads(done.read_text()) if done.exists() else interrupted(name, args.runs)
        if result:
            results.append(result)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "ablation.json").write_text(json.dumps(results, indent=2))
    (args.report / "ablation.md").write_text(table(results, args.data))
    print(table(results, args.data))


if __name__ == "__main__":
    main()
