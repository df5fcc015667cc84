"""The client's commands: submit, watch, compare, runs, cancel, advise and pbt. They speak HTTP through lrlab.client,
like any user's script, and never touch the database."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lrlab.cli.exits import EXIT_FAILED, CliError, say
from lrlab.schemas.runs import RunStatus


def _client(args: argparse.Namespace) -> Any:
    from lrlab.client import Client

    return Client(args.url, args.key)


def _read_json_object(file: str) -> dict[str, Any]:
    """The JSON object in `file` (- for stdin); a CliError that names the file and the problem otherwise."""
    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{name}: no such file") from None
    except UnicodeDecodeError:
        raise CliError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"{name}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, dict):
        raise CliError(f"{name} must hold a JSON object ({{...}}), not {type(value).__name__}")
    return value


def _spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec = _read_json_object(args.file) if args.file else {}
    if "pbt_id" in spec and isinstance(spec.get("run"), dict):  # `lrlab pbt schedule ID | lrlab submit -`
        spec = dict(spec["run"])
    optimizer = dict(spec.get("optimizer") or {})
    if args.optimizer:
        optimizer = {"name": args.optimizer}
    if args.lr is not None:
        optimizer.setdefault("name", "adam")
        optimizer["lr"] = args.lr
    if optimizer:
        spec["optimizer"] = optimizer
    for field in ("dataset", "model", "epochs", "batch_size", "seed", "device"):
        value = getattr(args, field)
        if value is not None:
            spec[field] = value
    return spec


def cmd_submit(args: argparse.Namespace) -> int:
    """A run spec (file, - for stdin, or flags), or an experiment when the file has a `grid`.

    Prints the id alone on stdout (ID=$(lrlab submit ...)); what it is and, with --wait, how it ended, on stderr.
    """
    lab = _client(args)
    body = _spec_from_args(args)
    if "grid" in body:
        experiment = lab.submit_experiment(body)
        say(f"experiment {experiment.id}: {len(experiment.runs)} runs")
        submitted, ids = experiment.id, experiment.runs
    else:
        run = lab.submit_run(body)
        say(f"run {run.id} {run.status.value}")
        submitted, ids = run.id, [run.id]
    print(submitted, flush=True)
    if args.wait:
        runs = lab.wait(ids, poll=args.poll, progress=False)
        for r in runs:
            best = r.summary.best_val_accuracy if r.summary else None
            say(f"{r.id} {r.status.value} best_val_accuracy={best}")
        ended = (RunStatus.succeeded, RunStatus.diverged, RunStatus.stopped)
        return 0 if all(r.status in ended for r in runs) else EXIT_FAILED
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Redraw one progress line per run until it finishes."""
    lab = _client(args)
    while True:
        run = lab.run(args.run_id)
        line = lab.progress_line(run)
        end = "\n" if run.status.is_finished() else ""
        print("\r" + line.ljust(100), end=end, flush=True)
        if end:
            return 0 if run.status != RunStatus.failed else EXIT_FAILED
        time.sleep(args.poll)


def cmd_compare(args: argparse.Namespace) -> int:
    lab = _client(args)
    cmp = lab.compare(experiment_id=args.experiment_id, metric=args.metric, target=args.target)
    cols = ("label", "status", "best_val_acc", "epoch", "min_val_loss", "to_target", "seconds")
    rows = []
    for r in cmp.runs:
        s = r.summary
        rows.append(
            (
                r.label or r.run_id[:8],
                r.status.value + (f"@{s.diverged_at or s.stopped_at}" if s and (s.diverged_at or s.stopped_at) else ""),
                f"{s.best_val_accuracy:.4f}" if s and s.best_val_accuracy is not None else "-",
                str(s.best_epoch) if s and s.best_epoch else "-",
                f"{s.min_val_loss:.4f}" if s and s.min_val_loss is not None else "-",
                str(s.epochs_to_target) if s and s.epochs_to_target else "-",
                f"{s.seconds:.1f}" if s else "-",
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if cmp.verdict is not None:
        v = cmp.verdict
        ci = f"[{v.ci_low:.4f}, {v.ci_high:.4f}]" if v.ci_low is not None and v.ci_high is not None else "n/a"
        print(
            f"verdict: {v.better} vs {v.other}: {v.difference}, {v.confidence:.0%} CI {ci}, significant={v.significant}"
        )
    if args.chart:
        lab.save_chart(args.experiment_id, args.chart_metric, args.chart)
        print(f"saved {args.chart}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    lab = _client(args)
    page = lab.runs(status=args.status, limit=args.limit)
    for r in page.data:
        best = r.summary.best_val_accuracy if r.summary and r.summary.best_val_accuracy is not None else None
        acc = f"{best:.4f}" if best is not None else "-"
        label = r.label or f"{r.spec.optimizer.name} lr={r.spec.optimizer.lr:g}"
        print(f"{r.id[:8]}  {r.status.value:<9}  {acc:<6}  {r.created_at:%Y-%m-%d %H:%M:%S}  {label}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _client(args).cancel(args.run_id)
    print(f"{run.id} {run.status.value}{' (stops at the end of its epoch)' if run.status == RunStatus.running else ''}")
    return 0


def cmd_search_submit(args: argparse.Namespace) -> int:
    """A search (SearchCreate JSON, - for stdin): its id alone on stdout, its study on stderr; --wait follows it."""
    lab = _client(args)
    created = lab.submit_search(_read_json_object(args.file))
    say(f"search {created.id}: Optuna study {created.study_name}")
    print(created.id, flush=True)
    if not args.wait:
        return 0
    found = lab.wait_search(created.id, poll=args.poll)
    _print_search(found)
    return 0 if found.status == "succeeded" else EXIT_FAILED


def cmd_search_watch(args: argparse.Namespace) -> int:
    """A progress line whenever the search moves, then its trials, best first, and the importances."""
    found = _client(args).wait_search(args.search_id, poll=args.poll)
    _print_search(found)
    return 0 if found.status == "succeeded" else EXIT_FAILED


def _print_search(found: Any) -> None:
    if found.error:
        print(f"error: {found.error}")
    reverse = found.spec.direction == "maximize"
    ranked = sorted(found.trials, key=lambda t: (t.state != "complete", -(t.value or 0) if reverse else (t.value or 0)))
    for t in ranked:
        value = "-" if t.value is None else f"{t.value:.4f}"
        params = " ".join(f"{k}={_num(v)}" for k, v in t.params.items())
        status = t.status.value if t.status is not None else "-"
        print(f"  trial {t.number:>3}  {t.state:<8} {status:<9} {found.spec.metric} {value}  {params}")
    if found.importances:
        print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in found.importances.items()))


def cmd_search_list(args: argparse.Namespace) -> int:
    for s in _client(args).searches(limit=args.limit).data:
        keys = ",".join(s.spec.space)
        print(f"{s.id[:8]}  {s.status:<9}  {s.spec.trials} trials x {keys}  {s.created_at:%Y-%m-%d %H:%M:%S}  {s.name}")
    return 0


def cmd_search_cancel(args: argparse.Namespace) -> int:
    found = _client(args).cancel_search(args.search_id)
    print(f"{found.id} {found.status}")
    return 0


def cmd_pbt_submit(args: argparse.Namespace) -> int:
    """A population (PbtCreate JSON, - for stdin); prints its id alone on stdout, its size on stderr."""
    created = _client(args).submit_pbt(_read_json_object(args.file))
    say(f"population {created.id}: {len(created.runs)} members")
    print(created.id, flush=True)
    return 0


def cmd_pbt_watch(args: argparse.Namespace) -> int:
    """A progress line whenever the population moves and each round's exploits, then the best member and the
    lr schedule its weights were trained with (inherited history included)."""
    lab = _client(args)
    shown, events = None, 0
    while True:
        pbt = lab.pbt(args.pbt_id)
        for e in pbt.lineage[events:]:  # ordered by epoch: a new round only appends
            changes = ", ".join(
                f"{k} {_num(e.old.get(k))} -> {_num(v)}{' (resampled)' if k in e.resampled else ''}"
                for k, v in e.new.items()
            )
            print(f"  after epoch {e.epoch}: member {e.target} <- member {e.source}  {changes}")
        events = len(pbt.lineage)
        line = lab.pbt_progress_line(pbt)
        if line != shown:
            print(line, flush=True)
            shown = line
        if pbt.status.is_finished():
            break
        time.sleep(args.poll)
    if pbt.error:
        print(f"error: {pbt.error}")
    _print_best(pbt)
    return 0 if pbt.status != RunStatus.failed else EXIT_FAILED


def _print_best(pbt: Any) -> None:
    """The best member, its score, and the lr schedule its weights were trained with, as runs of epochs."""
    best = pbt.best
    if best is None:
        print("no best member: no interval finished")
        return
    also = ""
    if pbt.spec.metric != "val_accuracy" and best.val_accuracy is not None:
        also = f" val_accuracy {best.val_accuracy:.4f}"
    score = f"{pbt.spec.metric} {best.score:.4f}{also}"
    print(f"best: member {best.member} (run {best.run_id}) {score} at epoch {best.epoch}")
    print("lr schedule (the weights' whole history):")
    base_lr = pbt.spec.base.optimizer.lr
    segments: list[tuple[int, int, int, Any]] = []  # (first epoch, last epoch, member, lr)
    for f in best.schedule:
        lr = f.values.get("lr", base_lr)
        if segments and segments[-1][2:] == (f.member, lr):
            segments[-1] = (segments[-1][0], f.epoch, f.member, lr)
        else:
            segments.append((f.epoch, f.epoch, f.member, lr))
    for first, last, member, lr in segments:
        print(f"  epochs {first}-{last}  lr {_num(lr)}  (as member {member})")
    print(f"replay it: lrlab pbt schedule {pbt.id} | lrlab submit -")


def cmd_pbt_schedule(args: argparse.Namespace) -> int:
    """The discovered schedule as JSON: its `run` is a run spec (`lrlab submit -` takes the whole document)."""
    found = _client(args).pbt_schedule(args.pbt_id)
    print(json.dumps(found.model_dump(mode="json"), indent=2))
    return 0


def cmd_pbt_list(args: argparse.Namespace) -> int:
    for p in _client(args).pbts(limit=args.limit).data:
        best = f"member {p.best.member} {p.spec.metric} {p.best.score:.4f}" if p.best else "-"
        searched = ",".join(p.spec.mutations)
        print(
            f"{p.id[:8]}  {p.status.value:<9}  {p.epochs_completed:>4}/{p.spec.epochs:<4}"
            f"  {p.spec.population} x {searched}  {p.created_at:%Y-%m-%d %H:%M:%S}  {p.name}  {best}"
        )
    return 0


def cmd_pbt_cancel(args: argparse.Namespace) -> int:
    pbt = _client(args).cancel_pbt(args.pbt_id)
    training = sum(m.status == RunStatus.running for m in pbt.members)
    print(f"{pbt.id} {pbt.status.value}{f' ({training} members stop at the end of their epoch)' if training else ''}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    """An advice (POST /v1/advice body, - for stdin): its id alone on stdout; with --wait, progress on stderr and
    the recommendation, the runner-up, the verdict and the compute spent on stdout."""
    lab = _client(args)
    created = lab.advise(_read_json_object(args.file))
    say(f"advice {created.id}: {len(created.lr_finders)} range tests first")
    print(created.id, flush=True)
    if not args.wait:
        return 0
    advice = lab.wait_advice(created.id, poll=args.poll)
    if advice.status != "succeeded":
        say(f"advice {advice.id} {advice.status.value}{f': {advice.error}' if advice.error else ''}")
        return EXIT_FAILED
    for title, found in (("recommendation", advice.recommendation), ("runner-up", advice.runner_up)):
        if found is not None:
            acc = found.val_accuracy
            spread = f" ± {acc.std:.4f}" if acc.std is not None else ""
            mean = f"{acc.mean:.4f}" if acc.mean is not None else "-"
            print(f"{title}: {found.label}  best val_accuracy {mean}{spread} over {acc.n} seeds")
    if advice.verdict is not None:
        print(f"verdict: {advice.verdict.statement}")
    c = advice.compute
    print(f"compute: {c.epochs_trained:.0f} epochs, {c.fraction or 0:.0%} of a {c.full_grid_epochs}-epoch full grid")
    if advice.recommendation is not None:
        print("run it: " + json.dumps(advice.recommendation.spec.model_dump(mode="json")))
    return 0


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def add_commands(sub: Any) -> None:
    """submit, watch, compare, runs, cancel, advise and pbt, on the `lrlab` parser's sub-parsers."""

    def remote(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=None, help="API address (default $LRLAB_URL or http://127.0.0.1:8000)")
        p.add_argument("--key", default=None, help="API key (default $LRLAB_API_KEY)")
        p.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
        return p

    sm = remote(sub.add_parser("submit", help="Submit a run (or an experiment: a file with a `grid`)."))
    sm.add_argument("file", nargs="?", help="JSON spec file, or - for stdin")
    sm.add_argument("--dataset")
    sm.add_argument("--model")
    sm.add_argument("--optimizer")
    sm.add_argument("--lr", type=float)
    sm.add_argument("--epochs", type=int)
    sm.add_argument("--batch-size", dest="batch_size", type=int)
    sm.add_argument("--seed", type=int)
    sm.add_argument("--device", choices=["auto", "cpu", "cuda"])
    sm.add_argument("--wait", action="store_true", help="wait until finished; exit 1 if a run failed")
    sm.set_defaults(func=cmd_submit)
    wt = remote(sub.add_parser("watch", help="A live progress line for a run."))
    wt.add_argument("run_id")
    wt.set_defaults(func=cmd_watch)
    cp = remote(sub.add_parser("compare", help="A table of an experiment's runs, best first."))
    cp.add_argument("experiment_id")
    cp.add_argument("--metric", default="best_val_accuracy")
    cp.add_argument("--target", type=float)
    cp.add_argument("--chart", help="also save a chart (.png or .svg)")
    cp.add_argument("--chart-metric", default="val_accuracy")
    cp.set_defaults(func=cmd_compare)
    rn = remote(sub.add_parser("runs", help="Recent runs, newest first."))
    rn.add_argument("--status")
    rn.add_argument("--limit", type=int, default=20)
    rn.set_defaults(func=cmd_runs)
    cn = remote(sub.add_parser("cancel", help="Cancel a run."))
    cn.add_argument("run_id")
    cn.set_defaults(func=cmd_cancel)

    ad = remote(sub.add_parser("advise", help="Which optimizer and lr: range tests, a search, replicates, a verdict."))
    ad.add_argument("file", help="JSON advice request (POST /v1/advice body), or - for stdin")
    ad.add_argument("--wait", action="store_true", help="wait; print the recommendation (exit 1 unless it succeeded)")
    ad.set_defaults(func=cmd_advise)

    pbt = sub.add_parser("pbt", help="Population based training: submit, watch, the discovered schedule.")
    pbtsub = pbt.add_subparsers(dest="pbt_command", required=True)
    ps = remote(pbtsub.add_parser("submit", help="Submit a population; prints its id."))
    ps.add_argument("file", help="JSON population (POST /v1/pbt body), or - for stdin")
    ps.set_defaults(func=cmd_pbt_submit)
    pw = remote(pbtsub.add_parser("watch", help="Progress per round until finished; the best member's schedule."))
    pw.add_argument("pbt_id")
    pw.set_defaults(func=cmd_pbt_watch)
    pd = remote(pbtsub.add_parser("schedule", help="The discovered schedule as JSON (pipe it to `lrlab submit -`)."))
    pd.add_argument("pbt_id")
    pd.set_defaults(func=cmd_pbt_schedule)
    pl = remote(pbtsub.add_parser("list", help="Recent populations: status, epochs, what they search, the best."))
    pl.add_argument("--limit", type=int, default=20)
    pl.set_defaults(func=cmd_pbt_list)
    pc = remote(pbtsub.add_parser("cancel", help="Cancel a population (training members stop after their epoch)."))
    pc.add_argument("pbt_id")
    pc.set_defaults(func=cmd_pbt_cancel)

    search = sub.add_parser("search", help="Model-based search (Optuna): submit, watch, list, cancel.")
    searchsub = search.add_subparsers(dest="search_command", required=True)
    ss = remote(searchsub.add_parser("submit", help="Submit a search; prints its id."))
    ss.add_argument("file", help="JSON search (POST /v1/searches body), or - for stdin")
    ss.add_argument("--wait", action="store_true", help="follow it; print its trials (exit 1 unless it succeeded)")
    ss.set_defaults(func=cmd_search_submit)
    sw = remote(searchsub.add_parser("watch", help="Progress until finished; the trials, best first."))
    sw.add_argument("search_id")
    sw.set_defaults(func=cmd_search_watch)
    sl = remote(searchsub.add_parser("list", help="Recent searches."))
    sl.add_argument("--limit", type=int, default=20)
    sl.set_defaults(func=cmd_search_list)
    sc = remote(searchsub.add_parser("cancel", help="Cancel a search (its training trials stop after their epoch)."))
    sc.add_argument("search_id")
    sc.set_defaults(func=cmd_search_cancel)
