// An advice, told top to bottom: the range tests and their suggestions, the search around them (pruned by
// successive halving), the finalists' replicates over seeds, the verdict between the two best, and the
// recommendation with a button that trains it as a run. Polls GET /v1/advice/{id} once a second until it ends;
// the range tests' sweeps are fetched once each, when they have ended.

import { ApiError, api } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import { FINISHED, datasetRef, errorBox, facts, fmt, h, params, pct, setTitle, shortId, sleep, statusBadge } from "./dom.js";

const POLL_MS = 1000;
const STAGES = [
  ["range_tests", "1 · Range tests"],
  ["search", "2 · Search"],
  ["replicates", "3 · Replicates"],
  ["verdict", "4 · Verdict"],
];

export async function advicePage(app, id) {
  const view = new AdviceView(app, await api(`/v1/advice/${id}`));
  setTitle(`Advice ${shortId(id)}`);
  await view.draw();
  while (!FINISHED.has(view.advice.status)) {
    await sleep(POLL_MS);
    try {
      view.advice = await api(`/v1/advice/${id}`);
      view.notice.replaceChildren();
    } catch (error) {
      if (error instanceof ApiError && error.status < 500) throw error;
      view.notice.replaceChildren(h("p", { class: "muted" }, `Live updates interrupted (${error.message}); retrying…`));
      continue;
    }
    await view.draw();
  }
}

class AdviceView {
  constructor(app, advice) {
    this.advice = advice;
    this.sweeps = new Map(); // lr-finder job id -> its points, once the job has ended
    this.sweepChart = new LineChart({
      name: "range-tests", title: "Range tests · smoothed loss against lr, suggestions marked", xLabel: "lr",
      yLabel: "smoothed loss", xLog: true, integerX: false, empty: "waiting for the range tests",
    });
    this.searchChart = new LineChart({
      name: "search", title: "Search · best val accuracy against lr, per optimizer", xLabel: "lr",
      yLabel: "best val_accuracy", xLog: true, integerX: false, yClamp: [0, 1], empty: "the search has not started",
    });
    this.header = h("div", { class: "page-head" });
    this.notice = h("div", { class: "notice" });
    this.stages = h("ol", { class: "stages", dataset: { role: "stages" } });
    this.rangeTests = h("div", { class: "table-wrap" });
    this.search = h("div", {});
    this.replicates = h("div", {});
    this.verdict = h("section", { class: "card", dataset: { role: "verdict" } });
    this.recommendation = h("section", { class: "card", dataset: { role: "recommendation" } });
    this.compute = h("section", { class: "card", dataset: { role: "compute" } });
    this.shownAnswer = null;
    app.replaceChildren(
      this.header,
      this.notice,
      this.stages,
      h("div", { class: "run-layout" },
        h("div", {},
          h("h2", {}, "1 · Range tests"),
          h("p", { class: "hint" }, "One lr range test per optimizer: the lr rises exponentially while the loss is ",
            "watched. The search centres on each test's suggestion (a tenth of the lr at the smoothed loss's minimum)."),
          this.sweepChart.element,
          this.rangeTests,
          h("h2", {}, "2 · Search"),
          this.search,
          h("h2", {}, "3 · Replicates"),
          this.replicates,
          h("h2", {}, "4 · Verdict"),
          this.verdict),
        h("div", { class: "side" }, this.recommendation, this.compute)),
    );
  }

  async draw() {
    const { advice } = this;
    this.drawHeader();
    this.drawStages();
    await this.fetchSweeps();
    this.drawRangeTests();
    this.drawSearch();
    this.drawReplicates();
    const answer = JSON.stringify([advice.status, advice.recommendation, advice.verdict]);
    if (answer !== this.shownAnswer) { // the button keeps its state between polls
      this.shownAnswer = answer;
      this.drawVerdict();
      this.drawRecommendation();
    }
    this.drawCompute();
  }

  drawHeader() {
    const { advice } = this;
    const base = advice.request.base;
    this.header.replaceChildren(
      h("h1", {}, "Advice ", h("span", { class: "mono" }, shortId(advice.id)), " ", statusBadge(advice.status)),
      h("p", { class: "subtitle" }, `${advice.name} · which optimizer and lr for `, datasetRef(base.dataset),
        ` · ${base.model.name} · batch ${base.batch_size} · ${base.epochs} epochs a run · `,
        `${advice.request.optimizers.length} optimizers · ${advice.request.seeds} seeds`),
      advice.error ? errorBox(advice.error) : "",
      FINISHED.has(advice.status)
        ? ""
        : h("button", { type: "button", class: "secondary", dataset: { role: "cancel" }, onclick: () => this.cancel() },
          "Cancel advice"),
    );
  }

  drawStages() {
    const at = STAGES.findIndex(([name]) => name === this.advice.stage);
    const done = this.advice.status === "succeeded";
    this.stages.replaceChildren(...STAGES.map(([name, label], i) => h("li", {
      dataset: { stage: name },
      class: i < at || done ? "done" : i === at ? "current" : "",
    }, label)));
  }

  async fetchSweeps() {
    for (const test of this.advice.range_tests) {
      if (!FINISHED.has(test.status) || this.sweeps.has(test.job_id)) continue;
      const job = await api(`/v1/lr-finder/${test.job_id}`);
      this.sweeps.set(test.job_id, job.points);
    }
  }

  drawRangeTests() {
    const tests = this.advice.range_tests;
    const color = (i) => PALETTE[i % PALETTE.length];
    const points = (id) => (this.sweeps.get(id) || []).map((p) => ({ x: p.lr, y: p.smoothed_loss }));
    // each sweep ends where its smoothed loss passed 4x its minimum: keep the axis to the lowest such end
    const ends = tests.map((t) => maxOf(points(t.job_id))).filter((v) => Number.isFinite(v));
    this.sweepChart.opts.yMax = ends.length ? 1.1 * Math.min(...ends) : undefined;
    this.sweepChart.setData(
      tests.map((t, i) => ({ id: `sweep-${i}`, label: t.optimizer, color: color(i), points: points(t.job_id) })),
      // unlabelled: suggestions often sit close together; the table below names each one
      tests.filter((t) => t.suggested_lr).map((t) => ({ x: t.suggested_lr, label: "" })),
    );
    this.rangeTests.replaceChildren(h("table", { dataset: { role: "range-tests" } },
      h("thead", {}, h("tr", {}, ["optimizer", "range test", "suggested lr", "search centre", "lrs searched"].map((c) => h("th", {}, c)))),
      h("tbody", {}, tests.map((t, i) => h("tr", { dataset: { jobId: t.job_id } },
        h("td", {}, h("span", { class: "swatch", style: `border-color:${color(i)}` }), t.optimizer),
        h("td", {}, h("a", { href: `/lr-finder/${t.job_id}`, class: "mono" }, shortId(t.job_id)), " ", statusBadge(t.status)),
        h("td", { class: "num" }, t.suggested_lr ? fmt(t.suggested_lr, 3) : "–"),
        h("td", { class: "num", title: t.source || "" }, t.center_lr ? fmt(t.center_lr, 3) : "–"),
        h("td", {}, t.lrs.length ? t.lrs.map((v) => fmt(v, 2)).join(" · ") : "–"),
      )))));
  }

  drawSearch() {
    const { search } = this.advice;
    if (!search) {
      this.searchChart.setData([]);
      this.search.replaceChildren(h("p", { class: "muted" }, "Starts when every range test has ended."), this.searchChart.element);
      return;
    }
    const optimizers = [...new Set(this.advice.range_tests.map((t) => t.optimizer))];
    const color = (name) => PALETTE[Math.max(0, optimizers.indexOf(name)) % PALETTE.length];
    const byOptimizer = optimizers.map((name) => ({
      id: `search-${optimizers.indexOf(name)}`, label: name, color: color(name),
      points: search.candidates.filter((c) => c.optimizer === name && c.best_val_accuracy !== null)
        .map((c) => ({ x: c.lr, y: c.best_val_accuracy })).sort((a, b) => a.x - b.x),
    }));
    this.searchChart.setData(byOptimizer);
    const stopping = search.early_stopping;
    const finalists = new Set(search.finalists);
    this.search.replaceChildren(
      h("p", { class: "hint" }, `Every optimizer at lrs spanning 100× around its centre, one seed, in experiment `,
        h("a", { href: `/experiments/${search.experiment_id}`, class: "mono", dataset: { role: "search-experiment" } }, shortId(search.experiment_id)),
        stopping
          ? `; successive halving from epoch ${stopping.grace_epochs} keeps the top 1/${stopping.reduction_factor} at each rung.`
          : "; every candidate trains the full budget."),
      this.searchChart.element,
      h("div", { class: "table-wrap" }, h("table", { dataset: { role: "candidates" } },
        h("thead", {}, h("tr", {}, ["", "optimizer", "lr", "status", "epochs", "best val acc"].map((c) => h("th", {}, c)))),
        h("tbody", {}, search.candidates.map((c) => {
          const label = `${c.optimizer} ${lrText(c.lr)}`;
          return h("tr", { dataset: { runId: c.run_id, finalist: finalists.has(label) ? "yes" : "no" } },
            h("td", {}, finalists.has(label) ? h("span", { class: "badge status-succeeded" }, "finalist") : ""),
            h("td", {}, h("a", { href: `/runs/${c.run_id}` }, c.optimizer)),
            h("td", { class: "num" }, fmt(c.lr, 3)),
            h("td", {}, statusBadge(c.status)),
            h("td", { class: "num" }, c.epochs),
            h("td", { class: "num" }, pct(c.best_val_accuracy)));
        })))),
    );
  }

  drawReplicates() {
    const { replicates, recommendation, runner_up: runnerUp } = this.advice;
    if (!replicates) {
      this.replicates.replaceChildren(h("p", { class: "muted" }, "Starts when the search has ended."));
      return;
    }
    const role = (c) => (recommendation && c.label === recommendation.label ? "winner"
      : runnerUp && c.label === runnerUp.label ? "runner-up" : "");
    const seeds = this.advice.request.seeds;
    this.replicates.replaceChildren(
      h("p", { class: "hint" }, `The finalists over ${seeds} seeds at full budget (experiment `,
        h("a", { href: `/experiments/${replicates.experiment_id}`, class: "mono" }, shortId(replicates.experiment_id)), ")",
        replicates.schedules_experiment_id
          ? ["; the other schedules on the search's best (experiment ",
            h("a", { href: `/experiments/${replicates.schedules_experiment_id}`, class: "mono" }, shortId(replicates.schedules_experiment_id)), ")"]
          : "",
        ". Each replicate scores its best validation accuracy."),
      h("div", { class: "table-wrap" }, h("table", { dataset: { role: "configurations" } },
        h("thead", {}, h("tr", {}, ["", "configuration", "mean", "std", "per seed"].map((c) => h("th", {}, c)))),
        h("tbody", {}, replicates.configurations.map((c) => h("tr", { dataset: { label: c.label, role: role(c) || "other" } },
          h("td", {}, role(c) ? h("span", { class: `badge ${role(c) === "winner" ? "status-succeeded" : "status-stopped"}` }, role(c)) : ""),
          h("td", {}, c.label),
          h("td", { class: "num" }, pct(c.val_accuracy.mean)),
          h("td", { class: "num" }, c.val_accuracy.std === null ? "–" : fmt(c.val_accuracy.std, 2)),
          h("td", {}, c.run_ids.flatMap((id, i) => [i ? " · " : "", h("a", { href: `/runs/${id}` }, pct(c.val_accuracy.values[i]))])),
        ))))),
    );
  }

  drawVerdict() {
    const { verdict, compare_url: compareUrl } = this.advice;
    if (!verdict) {
      this.verdict.replaceChildren(h("p", { class: "muted" },
        FINISHED.has(this.advice.status) ? "No verdict." : "Given once every replicate has ended."));
      return;
    }
    const runs = compareUrl ? compareUrl.split("runs=")[1] : "";
    this.verdict.replaceChildren(
      h("p", { class: "big-statement", dataset: { role: "statement" } }, verdict.statement),
      facts([
        ["difference", fmt(verdict.difference, 3)],
        [`${Math.round(verdict.confidence * 100)}% interval`, verdict.ci_low === null ? "–" : `${fmt(verdict.ci_low, 3)} to ${fmt(verdict.ci_high, 3)}`],
        ["significant", verdict.significant ? "yes" : "no"],
        ["method", verdict.method ? `${verdict.method}${verdict.n_pairs ? ` over ${verdict.n_pairs} seeds` : ""}` : "–"],
        ["note", verdict.note],
      ]),
      runs ? h("p", {}, h("a", { href: `/compare?runs=${runs}`, dataset: { role: "compare" } }, "Compare their replicates")) : "",
    );
  }

  drawRecommendation() {
    const card = this.recommendation;
    const best = this.advice.recommendation;
    if (!best) {
      card.replaceChildren(h("h3", {}, "Recommendation"),
        h("p", { class: "muted" }, FINISHED.has(this.advice.status) ? `None: the advice ${this.advice.status}.` : "Once the verdict is in."));
      return;
    }
    const train = h("button", { type: "button", dataset: { role: "train" } }, "Train it as a run");
    const runnerUp = this.advice.runner_up;
    card.replaceChildren(
      h("h3", {}, "Recommendation"),
      h("p", { class: "big", dataset: { role: "recommended" } }, best.label),
      facts([
        ["optimizer", `${best.optimizer.name} ${params(best.optimizer)}`.trim()],
        ["lr", fmt(best.lr, 3)],
        ["schedule", `${best.schedule.kind} ${params(best.schedule)}`],
        ["best val accuracy", `${pct(best.val_accuracy.mean)} ± ${best.val_accuracy.std === null ? "–" : fmt(best.val_accuracy.std, 2)} over ${best.val_accuracy.n} seeds`],
        ["runner-up", runnerUp && `${runnerUp.label}: ${pct(runnerUp.val_accuracy.mean)}`],
      ]),
      h("div", { class: "actions" }, train),
    );
    train.addEventListener("click", async () => {
      train.disabled = true;
      try {
        const run = await api("/v1/runs", { method: "POST", body: best.spec });
        location.href = `/runs/${run.id}`;
      } catch (error) {
        train.disabled = false;
        card.append(errorBox(error));
      }
    });
  }

  drawCompute() {
    const c = this.advice.compute;
    this.compute.replaceChildren(h("h3", {}, "Compute"), facts([
      ["epochs trained", h("span", { dataset: { role: "epochs-trained" } }, fmt(c.epochs_trained, 4))],
      ["a full grid", `${c.full_grid_epochs} epochs: every candidate × ${this.advice.request.seeds} seeds at full budget`],
      ["fraction", c.fraction === null ? "–" : pct(c.fraction)],
    ]));
  }

  async cancel() {
    try {
      this.advice = await api(`/v1/advice/${this.advice.id}/cancel`, { method: "POST" });
      await this.draw();
    } catch (error) {
      this.notice.replaceChildren(errorBox(error));
    }
  }
}

function maxOf(points) {
  const ys = points.map((p) => p.y).filter((v) => v !== null && Number.isFinite(v));
  return ys.length ? Math.max(...ys) : Infinity;
}

// As lrlab.advice.plan.lr_text names lrs in labels: 3e-3, 3.16e-2, 1, 12.
function lrText(lr) {
  if (lr >= 1 && lr < 1000) return String(Number(lr.toPrecision(3)));
  const [m, e] = lr.toExponential(2).split("e");
  return `${Number(m)}e${Number(e)}`;
}
