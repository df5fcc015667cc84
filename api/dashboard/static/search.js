// A search: the trials over time (each trial's value when it was told, complete and pruned apart), the best
// so far, the trials table (each a run), and Optuna's parameter importances. Polls until the search ends.

import { api } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import { facts, fmt, h, setTitle, shortId, sleep, statusBadge, when } from "./dom.js";

const POLL_MS = 1000;
const ENDED = new Set(["succeeded", "failed", "cancelled"]);

export async function searchPage(app, id) {
  setTitle(`Search ${shortId(id)}`);
  const trialsChart = new LineChart({
    name: "trials", title: "Trials over time", xLabel: "seconds since the search started", yLabel: "value",
    integerX: false, empty: "no trial told yet",
  });
  const bestChart = new LineChart({
    name: "best", title: "Best so far", xLabel: "seconds since the search started", yLabel: "best value",
    integerX: false, empty: "no complete trial yet",
  });
  const header = h("div", { class: "page-head" });
  const side = h("div", { class: "side" });
  const table = h("section", { class: "card" });
  app.replaceChildren(
    header,
    h("div", { class: "run-layout" }, h("div", { class: "charts" }, trialsChart.element, bestChart.element), side),
    table,
  );
  for (;;) {
    const search = await api(`/v1/searches/${id}`);
    render(search, { header, side, table, trialsChart, bestChart });
    if (ENDED.has(search.status)) return;
    await sleep(POLL_MS);
  }
}

// (seconds since the search was created, trial) for every trial whose run has finished, in that order
function told(search) {
  const start = Date.parse(search.created_at);
  return search.trials
    .filter((t) => t.finished_at && t.state !== "running" && t.value !== null)
    .map((t) => ({ x: (Date.parse(t.finished_at) - start) / 1000, t }))
    .sort((a, b) => a.x - b.x);
}

function render(search, { header, side, table, trialsChart, bestChart }) {
  const { spec } = search;
  const maximize = spec.metric === "val_accuracy";
  header.replaceChildren(
    h("h1", {}, "Search ", h("span", { class: "mono" }, shortId(search.id)), " ", statusBadge(search.status)),
    h("p", { class: "subtitle" },
      `${search.name} · ${spec.sampler} · ${spec.trials} trials, ${spec.parallel} at a time · ${spec.metric}`
      + ` (${maximize ? "higher" : "lower"} is better) · keys ${Object.keys(spec.space).join(", ")}`),
  );

  const points = told(search);
  const byState = (state) => points.filter((p) => p.t.state === state).map((p) => ({ x: p.x, y: p.t.value }));
  trialsChart.setData([
    { id: "complete", label: "complete", metric: "value", color: PALETTE[0], points: byState("complete") },
    { id: "pruned", label: "pruned (stopped early)", metric: "value", color: PALETTE[5], dash: "2 4", points: byState("pruned") },
  ]);
  const best = [];
  let bestValue = null;
  for (const p of points) {
    if (p.t.state !== "complete") continue;
    if (bestValue === null || (maximize ? p.t.value > bestValue : p.t.value < bestValue)) bestValue = p.t.value;
    best.push({ x: p.x, y: bestValue });
  }
  bestChart.setData([{ id: "best", label: "best so far", metric: "best", color: PALETTE[2], points: best }]);

  const importances = Object.entries(search.importances || {});
  side.replaceChildren(
    h("section", { class: "card" }, h("h3", {}, "Best so far"),
      search.best
        ? [
            h("p", { class: "big", dataset: { role: "best-value" } }, fmt(search.best.value, 4)),
            h("p", {}, `trial ${search.best.number}: `, paramsText(search.best.params)),
            search.best.run_id && h("a", { href: `/runs/${search.best.run_id}` }, "its run"),
          ]
        : h("p", { class: "muted" }, "No complete trial yet.")),
    h("section", { class: "card" }, h("h3", {}, "Importances"),
      importances.length
        ? h("ul", { class: "chips", dataset: { role: "importances" } },
            importances.map(([k, v]) => h("li", { dataset: { key: k } }, `${k} ${v.toFixed(2)}`)))
        : h("p", { class: "muted" }, "Optuna computes them once two trials are complete.")),
    h("section", { class: "card" }, h("h3", {}, "Search"), facts([
      ["study", h("span", { class: "mono" }, search.study_name)],
      ["early stopping", spec.early_stopping
        ? `ASHA on ${spec.early_stopping.metric}, grace ${spec.early_stopping.grace_epochs}, η ${spec.early_stopping.reduction_factor}`
        : null],
      ["epochs per trial", spec.base.epochs],
      ["created", when(search.created_at)],
      ["error", search.error],
    ])),
  );

  table.replaceChildren(
    h("h3", {}, `Trials (${search.trials.length} of ${spec.trials})`),
    h("div", { class: "table-wrap" }, h("table", { dataset: { role: "trials" } },
      h("thead", {}, h("tr", {},
        h("th", { class: "num" }, "#"), h("th", {}, "state"), h("th", {}, "run"), h("th", {}, "parameters"),
        h("th", { class: "num" }, spec.metric), h("th", { class: "num" }, "epochs"))),
      h("tbody", {}, search.trials.map((t) => h("tr", { dataset: { trial: String(t.number), state: t.state } },
        h("td", { class: "num" }, t.number),
        h("td", {}, t.state),
        h("td", {}, t.run_id ? [h("a", { href: `/runs/${t.run_id}` }, shortId(t.run_id)), " ", statusBadge(t.status)] : "–"),
        h("td", {}, paramsText(t.params)),
        h("td", { class: "num" }, t.value === null ? "–" : fmt(t.value, 4)),
        h("td", { class: "num" }, t.epochs_completed ?? "–"),
      ))),
    )),
  );
}

function paramsText(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v, 3) : v}`).join(" ");
}
