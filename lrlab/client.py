"""A Python client for the lrlab HTTP API: typed by the same pydantic schemas the API itself uses.

    from lrlab.client import Client
    lab = Client()                                   # LRLAB_URL / LRLAB_API_KEY, or Client(url, key)
    exp = lab.submit_experiment({"name": "lrs", "base": {"epochs": 10}, "grid": {"lr": [1e-3, 1e-2]}})
    lab.wait(exp.runs)                               # progress on stderr
    print(lab.compare(experiment_id=exp.id).verdict)
    lab.save_chart(exp.id, "val_accuracy", "acc.png")
    pbt = lab.wait_pbt(lab.submit_pbt({"mutations": {"lr": {"log_uniform": [1e-4, 1e-1]}}}).id)
    lab.submit_run(lab.pbt_schedule(pbt.id).run)  # replay the discovered lr schedule from scratch
    advice = lab.wait_advice(lab.advise({"base": {"dataset": "digits", "epochs": 10}}).id)
    print(advice.recommendation.label, advice.verdict.statement)  # which optimizer and lr, and how sure

It speaks HTTP only (no torch, no database). `curves_frame` and `compare_frame` return pandas DataFrames:
they need pandas, which the `frames` extra installs (pip install 'lrlab[frames]'; the `dev` extra has it).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
from pydantic import BaseModel

from lrlab.schemas import Curves, RunCreated, RunPublic, RunSpec, RunsPublic, RunStatus
from lrlab.schemas.advice import AdviceCreate, AdviceCreated, AdvicePublic, AdvicesPublic
from lrlab.schemas.compare import Comparison
from lrlab.schemas.experiments import (
    ExperimentCreate,
    ExperimentCreated,
    ExperimentPublic,
    ExperimentsPublic,
    LrFinderCreate,
    LrFinderPublic,
)
from lrlab.schemas.pbt import DiscoveredSchedule, PbtCreate, PbtCreated, PbtPublic, PbtsPublic
from lrlab.schemas.search import SearchCreate, SearchCreated, SearchesPublic, SearchPublic

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A 4xx/5xx answer; `detail` is the API's list of {loc, msg, type}."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        first = detail[0] if isinstance(detail, list) and detail else {}
        where = ".".join(str(p) for p in first.get("loc", [])) if isinstance(first, dict) else ""
        msg = first.get("msg") if isinstance(first, dict) else str(detail)
        super().__init__(f"{status} {where}: {msg}" if where else f"{status}: {msg}")


class Client:
    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = (url or os.environ.get("LRLAB_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = key or os.environ.get("LRLAB_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    # --- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise ApiError(resp.status_code, detail)
        return resp

    def _get(self, model: type[M], path: str, **params: Any) -> M:
        query = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self._request("GET", path, params=query).json())

    def _post(self, model: type[M], path: str, body: Any, idempotency_key: str | None = None) -> M:
        payload = body.model_dump(mode="json", exclude_unset=True) if isinstance(body, BaseModel) else body
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return model.model_validate(self._request("POST", path, json=payload, headers=headers).json())

    # --- runs -----------------------------------------------------------------------------------

    def submit_run(self, spec: RunSpec | dict[str, Any], *, idempotency_key: str | None = None) -> RunCreated:
        return self._post(RunCreated, "/v1/runs", spec, idempotency_key)

    def run(self, run_id: str) -> RunPublic:
        return self._get(RunPublic, f"/v1/runs/{run_id}")

    def runs(
        self,
        *,
        status: RunStatus | str | None = None,
        dataset: str | None = None,
        optimizer: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunsPublic:
        return self._get(
            RunsPublic, "/v1/runs", status=status, dataset=dataset, optimizer=optimizer, limit=limit, cursor=cursor
        )

    def curves(self, run_id: str, *, max_points: int | None = None) -> Curves:
        return self._get(Curves, f"/v1/runs/{run_id}/curves", max_points=max_points)

    def cancel(self, run_id: str) -> RunPublic:
        return RunPublic.model_validate(self._request("POST", f"/v1/runs/{run_id}/cancel").json())

    # --- experiments, comparisons, charts -------------------------------------------------------

    def submit_experiment(
        self, body: ExperimentCreate | dict[str, Any], *, idempotency_key: str | None = None
    ) -> ExperimentCreated:
        return self._post(ExperimentCreated, "/v1/experiments", body, idempotency_key)

    def experiment(self, experiment_id: str) -> ExperimentPublic:
        return self._get(ExperimentPublic, f"/v1/experiments/{experiment_id}")

    def experiments(self, *, limit: int = 20, cursor: str | None = None) -> ExperimentsPublic:
        return self._get(ExperimentsPublic, "/v1/experiments", limit=limit, cursor=cursor)

    def compare(
        self,
        *,
        experiment_id: str | None = None,
        runs: Sequence[str] | None = None,
        metric: str = "best_val_accuracy",
        target: float | None = None,
        max_points: int | None = None,
    ) -> Comparison:
        if (experiment_id is None) == (runs is None):
            raise ValueError("give experiment_id or runs")
        path = f"/v1/experiments/{experiment_id}/compare" if experiment_id else "/v1/compare"
        ids = ",".join(runs) if runs is not None else None
        return self._get(Comparison, path, runs=ids, metric=metric, target=target, max_points=max_points)

    def chart(self, experiment_id: str, metric: str = "val_accuracy", *, fmt: str = "png", log: bool = False) -> bytes:
        path = f"/v1/experiments/{experiment_id}/charts/{metric}.{fmt}"
        return self._request("GET", path, params={"log": str(log).lower()}).content

    def save_chart(self, experiment_id: str, metric: str, path: str | Path, *, log: bool = False) -> Path:
        out = Path(path)
        out.write_bytes(self.chart(experiment_id, metric, fmt=out.suffix.lstrip(".") or "png", log=log))
        return out

    # --- lr range test --------------------------------------------------------------------------

    def submit_lr_finder(self, body: LrFinderCreate | dict[str, Any]) -> LrFinderPublic:
        return self._post(LrFinderPublic, "/v1/lr-finder", body)

    def lr_finder(self, job_id: str) -> LrFinderPublic:
        return self._get(LrFinderPublic, f"/v1/lr-finder/{job_id}")

    def cancel_lr_finder(self, job_id: str) -> LrFinderPublic:
        return LrFinderPublic.model_validate(self._request("POST", f"/v1/lr-finder/{job_id}/cancel").json())

    # --- population based training -------------------------------------------------------------

    def submit_pbt(self, request: PbtCreate | dict[str, Any], *, idempotency_key: str | None = None) -> PbtCreated:
        return self._post(PbtCreated, "/v1/pbt", request, idempotency_key)

    def pbt(self, pbt_id: str) -> PbtPublic:
        return self._get(PbtPublic, f"/v1/pbt/{pbt_id}")

    def pbts(self, *, limit: int = 20, cursor: str | None = None) -> PbtsPublic:
        return self._get(PbtsPublic, "/v1/pbt", limit=limit, cursor=cursor)

    def cancel_pbt(self, pbt_id: str) -> PbtPublic:
        return PbtPublic.model_validate(self._request("POST", f"/v1/pbt/{pbt_id}/cancel").json())

    def pbt_schedule(self, pbt_id: str) -> DiscoveredSchedule:
        """The best member's lr schedule and a run spec replaying it; ApiError 409 before any interval ended."""
        return self._get(DiscoveredSchedule, f"/v1/pbt/{pbt_id}/schedule")

    def pbt_chart(self, pbt_id: str, metric: str = "val_accuracy", *, fmt: str = "png") -> bytes:
        return self._request("GET", f"/v1/pbt/{pbt_id}/charts/{metric}.{fmt}").content

    def save_pbt_chart(self, pbt_id: str, metric: str, path: str | Path) -> Path:
        """The population's chart (members' `metric`, exploits, the best member's lr) to a .png or .svg file."""
        out = Path(path)
        out.write_bytes(self.pbt_chart(pbt_id, metric, fmt=out.suffix.lstrip(".") or "png"))
        return out

    # --- searches ---------------------------------------------------------------------------------

    def submit_search(
        self, request: SearchCreate | dict[str, Any], *, idempotency_key: str | None = None
    ) -> SearchCreated:
        """Optuna asks `trials` configurations of `request["base"]` from its `space`; wait_search(id)."""
        return self._post(SearchCreated, "/v1/searches", request, idempotency_key)

    def search(self, search_id: str) -> SearchPublic:
        return self._get(SearchPublic, f"/v1/searches/{search_id}")

    def searches(self, *, limit: int = 20, cursor: str | None = None) -> SearchesPublic:
        return self._get(SearchesPublic, "/v1/searches", limit=limit, cursor=cursor)

    def cancel_search(self, search_id: str) -> SearchPublic:
        return SearchPublic.model_validate(self._request("POST", f"/v1/searches/{search_id}/cancel").json())

    def wait_search(
        self, search_id: str, *, poll: float = 1.0, timeout: float | None = None, progress: bool = True
    ) -> SearchPublic:
        """Poll until the search is finished; a progress line on stderr whenever it moves."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = None
        while True:
            found = self.search(search_id)
            line = self.search_progress_line(found)
            if progress and line != shown:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
                shown = line
            if found.status not in ("queued", "running"):
                return found
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {search_id} not finished after {timeout}s")
            time.sleep(poll)

    @staticmethod
    def search_progress_line(search: SearchPublic) -> str:
        """Trials told of those asked for, how many stopped early, and the best so far."""
        told = [t for t in search.trials if t.state != "running"]
        pruned = sum(t.state == "pruned" for t in told)
        best = search.best
        shown = "-" if best is None or best.value is None else f"{best.value:.4f} (trial {best.number}: {best.params})"
        return (
            f"search {search.id[:8]} {search.status}: {len(told)}/{search.spec.trials} trials told,"
            f" {pruned} pruned; best {search.spec.metric} {shown}"
        )

    # --- advice -----------------------------------------------------------------------------------

    def advise(self, request: AdviceCreate | dict[str, Any], *, idempotency_key: str | None = None) -> AdviceCreated:
        """Which optimizer and lr for `request["base"]` (dataset, model, batch size, epochs): wait_advice(id)."""
        return self._post(AdviceCreated, "/v1/advice", request, idempotency_key)

    def advice(self, advice_id: str) -> AdvicePublic:
        return self._get(AdvicePublic, f"/v1/advice/{advice_id}")

    def advice_list(self, *, limit: int = 20, cursor: str | None = None) -> AdvicesPublic:
        return self._get(AdvicesPublic, "/v1/advice", limit=limit, cursor=cursor)

    def cancel_advice(self, advice_id: str) -> AdvicePublic:
        return AdvicePublic.model_validate(self._request("POST", f"/v1/advice/{advice_id}/cancel").json())

    def wait_advice(
        self,
        advice_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
        out: TextIO | None = None,
    ) -> AdvicePublic:
        """Poll until the advice is finished; a progress line on stderr whenever it moves."""
        stream = out or sys.stderr
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = None
        while True:
            advice = self.advice(advice_id)
            line = self.advice_progress_line(advice)
            if progress and line != shown:
                stream.write(line + "\n")
                stream.flush()
                shown = line
            if advice.status.is_finished():
                return advice
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"advice {advice_id} not finished after {timeout}s")
            time.sleep(poll)

    @staticmethod
    def advice_progress_line(advice: AdvicePublic) -> str:
        """The stage and how far its objects are: range tests ended, search runs ended, replicates ended."""
        if advice.stage == "range_tests":
            done = sum(t.status not in ("queued", "running") for t in advice.range_tests)
            where = f"range tests {done}/{len(advice.range_tests)}"
        elif advice.stage == "search" and advice.search is not None:
            done = sum(c.status not in ("queued", "running") for c in advice.search.candidates)
            where = f"search {done}/{len(advice.search.candidates)} runs"
        elif advice.replicates is not None:
            configurations = advice.replicates.configurations
            done = sum(c.val_accuracy.n for c in configurations)
            where = f"replicates {done}/{sum(len(c.run_ids) for c in configurations)} runs"
        else:
            where = advice.stage.value
        spent = f"{advice.compute.epochs_trained:.0f}/{advice.compute.full_grid_epochs} epochs of a full grid"
        return f"{advice.id[:8]} {advice.status.value} {where}  {spent}"

    # --- waiting ----------------------------------------------------------------------------------

    def wait(
        self,
        run_ids: Iterable[str],
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
        out: TextIO | None = None,
    ) -> list[RunPublic]:
        """Poll until every run is finished; a progress line per run on stderr (epoch, loss, accuracy, ETA)."""
        ids = list(run_ids)
        stream = out or sys.stderr
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            runs = [self.run(r) for r in ids]
            if progress:
                for run in runs:
                    stream.write(self.progress_line(run) + "\n")
                stream.flush()
            if all(r.status.is_finished() for r in runs):
                return runs
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"runs not finished after {timeout}s")
            time.sleep(poll)

    def wait_pbt(
        self,
        pbt_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
        out: TextIO | None = None,
    ) -> PbtPublic:
        """Poll until the population is finished; a progress line on stderr whenever it moves."""
        stream = out or sys.stderr
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = None
        while True:
            pbt = self.pbt(pbt_id)
            line = self.pbt_progress_line(pbt)
            if progress and line != shown:
                stream.write(line + "\n")
                stream.flush()
                shown = line
            if pbt.status.is_finished():
                return pbt
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"population {pbt_id} not finished after {timeout}s")
            time.sleep(poll)

    @staticmethod
    def pbt_progress_line(pbt: PbtPublic, width: int = 24) -> str:
        """Epochs every member has trained, rounds (intervals) decided, exploits so far and the leader."""
        total, interval = pbt.spec.epochs, pbt.spec.interval
        done = min((len(m.points) for m in pbt.members), default=0)
        filled = round(width * done / total)
        rounds = math.ceil(total / interval)
        line = (
            f"{pbt.id[:8]} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            f" round {math.ceil(pbt.epochs_completed / interval)}/{rounds} {pbt.status.value}"
            f"  {len(pbt.lineage)} exploit{'s' if len(pbt.lineage) != 1 else ''}"
        )
        if pbt.best is not None:
            line += f"  best member {pbt.best.member} {pbt.spec.metric} {pbt.best.score:.4f}"
        return line

    def progress_line(self, run: RunPublic, width: int = 24) -> str:
        pts = self.curves(run.id).points if run.status != RunStatus.queued else []
        total = run.spec.epochs
        done = len(pts)
        bar = "#" * round(width * done / total) + "." * (width - round(width * done / total))
        line = f"{run.id[:8]} [{bar}] {done}/{total} {run.status.value}"
        if pts:
            last = pts[-1]
            loss = f"{last.train_loss:.4f}" if last.train_loss is not None else "nan"
            acc = f"{last.val_accuracy:.3f}" if last.val_accuracy is not None else "-"
            line += f"  loss {loss}  val_acc {acc}"
            if run.status == RunStatus.running:
                per_epoch = sum(p.seconds for p in pts) / done
                line += f"  ETA {per_epoch * (total - done):.0f}s"
        return line

    # --- pandas -----------------------------------------------------------------------------------

    def curves_frame(self, run_id: str) -> Any:
        pd = _pandas("curves_frame")
        return pd.DataFrame([p.model_dump() for p in self.curves(run_id).points]).set_index("epoch")

    def compare_frame(self, **kwargs: Any) -> Any:
        pd = _pandas("compare_frame")
        rows = [
            {
                "run_id": r.run_id,
                "label": r.label,
                "status": r.status.value,
                **(r.summary.model_dump() if r.summary else {}),
            }
            for r in self.compare(**kwargs).runs
        ]
        return pd.DataFrame(rows)


def _pandas(method: str) -> Any:
    try:
        import pandas
    except ImportError as exc:  # optional: the client itself needs only httpx and pydantic
        raise ImportError(f"Client.{method} needs pandas: pip install 'lrlab[frames]'") from exc
    return pandas
