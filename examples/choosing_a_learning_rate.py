"""Reproduce the experiments of "Choosing a Learning Rate" against a running lrlab, over HTTP only.

  lrlab up &                                            # or any lrlab API
  python examples/choosing_a_learning_rate.py --dataset digits --epochs 30 --out ~/lrlab-charts

Three experiments, one request each:
  1. Adam at learning rates 1e-4, 1e-3 and 1e-2;
  2. SGD, RMSProp, Adam, Adagrad and Adadelta at one learning rate (1e-3);
  3. step annealing: SGD at 0.1, then 0.01 after 40% of the epochs and 0.001 after 70% (the article's
     400/700 of 1000), against SGD held at 0.1.
It waits with progress output, prints each comparison table and saves the charts (accuracy and loss for
each experiment, and the lr of the annealing one) in --out, by default a new temporary directory (printed),
never the working directory. Needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class Api:
    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"content-type": "application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, body: Any = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as err:
            sys.exit(f"{method} {path} -> {err.code}: {err.read().decode()}")

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self.request(method, path, body))


def experiments(dataset: str, model: str, epochs: int, seeds: list[int]) -> list[dict[str, Any]]:
    base = {"dataset": dataset, "model": model, "epochs": epochs, "batch_size": 64}
    grid_seeds = {"seed": seeds} if len(seeds) > 1 else {}
    if len(seeds) == 1:
        base["seed"] = seeds[0]
    annealed = {"kind": "multistep", "milestones": [max(1, round(0.4 * epochs)), max(2, round(0.7 * epochs))]}
    return [
        {
            "key": "adam_lr",
            "title": "Adam at three learning rates",
            "body": {
                "name": "Adam at 1e-4, 1e-3, 1e-2",
                "base": {**base, "optimizer": {"name": "adam"}},
                "grid": {"lr": [1e-4, 1e-3, 1e-2], **grid_seeds},
            },
        },
        {
            "key": "optimizers",
            "title": "Five optimizers at lr 1e-3",
            "body": {
                "name": "SGD vs RMSProp vs Adam vs Adagrad vs Adadelta at 1e-3",
                "base": {**base, "optimizer": {"name": "adam", "lr": 1e-3}},
                "grid": {
                    "optimizer": [{"name": n} for n in ("sgd", "rmsprop", "adam", "adagrad", "adadelta")],
                    **grid_seeds,
                },
            },
        },
        {
            "key": "annealing",
            "title": "Step annealing 0.1 -> 0.01 -> 0.001",
            "body": {
                "name": "SGD step annealing 0.1 -> 0.01 -> 0.001",
                "base": {**base, "optimizer": {"name": "sgd", "lr": 0.1}},
                "grid": {"schedule": [{"kind": "constant"}, {**annealed, "gamma": 0.1}], **grid_seeds},
            },
        },
    ]


def wait(api: Api, ids: dict[str, str], poll: float) -> None:
    last = ""
    while True:
        states = {key: api.json("GET", f"/v1/experiments/{eid}") for key, eid in ids.items()}
        line = "  ".join(
            f"{key}: " + ",".join(f"{n} {s}" for s, n in sorted(e["counts"].items())) for key, e in states.items()
        )
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
        if all(e["status"] == "finished" for e in states.values()):
            return
        time.sleep(poll)


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(api: Api, title: str, experiment_id: str, target: float) -> str:
    cmp = api.json("GET", f"/v1/experiments/{experiment_id}/compare?target={target}")
    rows = [
        f"### {title}",
        "",
        f"| run | status | best val acc | at epoch | final val loss | epochs to {target:g} | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in cmp["runs"]:
        s = run["summary"]
        status = run["status"] + (f" @ {s['diverged_at']}" if s.get("diverged_at") else "")
        rows.append(
            f"| {run['label']} | {status} | {fmt(s['best_val_accuracy'])} | {fmt(s['best_epoch'], 'd')} | "
            f"{fmt(s['final_val_loss'])} | {fmt(s['epochs_to_target'], 'd')} | {fmt(s['seconds'], '.1f')} |"
        )
    if cmp.get("verdict"):
        v = cmp["verdict"]
        ci = f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]" if v["ci_low"] is not None else "n/a"
        rows += [
            "",
            f"Verdict: {v['better']} vs {v['other']}: difference {fmt(v['difference'])}, "
            f"{v['confidence']:.0%} CI {ci} ({v['method']}), significant: {v['significant']}",
        ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", help="API key, if the server requires one")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", default="0", help="comma-separated; several seeds give replicate statistics")
    ap.add_argument("--target", type=float, default=0.9, help="accuracy for the epochs-to-target column")
    ap.add_argument("--out", type=Path, help="directory for the charts (default: a new temporary one, printed)")
    ap.add_argument("--format", choices=["png", "svg"], default="png")
    ap.add_argument("--poll", type=float, default=2.0)
    args = ap.parse_args()
    api = Api(args.url, args.key)
    plan = experiments(args.dataset, args.model, args.epochs, [int(s) for s in args.seeds.split(",")])
    ids = {e["key"]: api.json("POST", "/v1/experiments", e["body"])["id"] for e in plan}
    print("submitted:", ", ".join(f"{k} {v}" for k, v in ids.items()), flush=True)
    wait(api, ids, args.poll)
    out = args.out or Path(tempfile.mkdtemp(prefix="lrlab-charts-"))
    out.mkdir(parents=True, exist_ok=True)
    for e in plan:
        print()
        print(
            table(api, f"{e['title']} ({args.dataset}, {args.model}, {args.epochs} epochs)", ids[e["key"]], args.target)
        )
        metrics = ["val_accuracy", "val_loss"] + (["lr"] if e["key"] == "annealing" else [])
        for metric in metrics:
            path = out / f"{args.dataset}-{e['key']}-{metric}.{args.format}"
            log = "?log=true" if metric == "lr" else ""
            path.write_bytes(api.request("GET", f"/v1/experiments/{ids[e['key']]}/charts/{metric}.{args.format}{log}"))
            print(f"saved {path}")
    print(f"\ncharts in {out}")


if __name__ == "__main__":
    main()
