// An lr range test: loss and smoothed loss against lr (log x), the suggested lr marked, the suggested grid
// listed with a link that starts a grid over it, and every rule's suggestion with its rule.

import { api } from "./api.js";
import { LineChart, PALETTE, extent } from "./chart.js";
import { FINISHED, datasetRef, facts, fmt, h, params, setTitle, shortId, sleep, statusBadge } from "./dom.js";

const POLL_MS = 1000;

export async function lrFinderPage(app, id) {
  setTitle(`LR range test ${shortId(id)}`);
  const chart = new LineChart({
    name: "lr-finder", title: "Loss against learning rate", xLabel: "lr", yLabel: "loss",
    xLog: true, integerX: false, logToggle: true, empty: "waiting for the first steps",
  });
  const header = h("div", { class: "page-head" });
  const side = h("div", { class: "side" });
  app.replaceChildren(header, h("div", { class: "run-layout" }, h("div", { class: "charts" }, chart.element), side));

  for (;;) {
    const job = await api(`/v1/lr-finder/${id}`);
    render(job, header, side, chart);
    if (FINISHED.has(job.status)) return;
    await sleep(POLL_MS);
  }
}

function render(job, header, side, chart) {
  const { spec } = job;
  header.replaceChildren(
    h("h1", {}, "LR range test ", h("span", { class: "mono" }, shortId(job.id)), " ", statusBadge(job.status)),
    h("p", { class: "subtitle" },
      `${spec.optimizer.name} on `, datasetRef(spec.dataset),
      ` · ${spec.model.name} · lr ${fmt(spec.min_lr)} → ${fmt(spec.max_lr)} over ${spec.steps} steps`),
  );
  const series = [
    { id: "loss", label: "loss", metric: "loss", color: PALETTE[5], points: job.points.map((p) => ({ x: p.lr, y: p.loss })) },
    { id: "smoothed", label: "smoothed loss", metric: "smoothed loss", color: PALETTE[0],
      points: job.points.map((p) => ({ x: p.lr, y: p.smoothed_loss })) },
  ];
  // The raw loss explodes at the end of a sweep; cap the axis where the smoothed loss tops out.
  const smoothed = job.points.map((p) => p.smoothed_loss).filter((v) => v !== null);
  chart.opts.yMax = smoothed.length ? 1.25 * extent(smoothed)[1] : undefined;
  const markers = job.suggested_lr ? [{ x: job.suggested_lr, label: `suggested lr ${fmt(job.suggested_lr, 3)}` }] : [];
  chart.setData(series, markers);

  const grid = job.suggested_grid || [];
  const start = new URLSearchParams({
    grid_lr: grid.map((v) => fmt(v)).join(", "),
    optimizer: spec.optimizer.name,
    dataset: spec.dataset.name || "digits",
  });
  side.replaceChildren(
    h("section", { class: "card" }, h("h3", {}, "Suggestion"),
      job.suggested_lr
        ? [
            h("p", { class: "big", dataset: { role: "suggested-lr" } }, fmt(job.suggested_lr, 3)),
            h("p", { class: "muted" }, job.rule),
            h("h4", {}, "Suggested grid"),
            h("ul", { class: "chips", dataset: { role: "suggested-grid" } }, grid.map((v) => h("li", {}, fmt(v, 3)))),
            grid.length && h("a", { class: "button", href: `/?${start}` }, "Start a grid with these lrs"),
          ]
        : h("p", { class: "muted" }, FINISHED.has(job.status) ? "No suggestion." : "Sweeping…"),
    ),
    ...suggestionsCard(job.suggestions || []),
    h("section", { class: "card" }, h("h3", {}, "Sweep"), facts([
      ["steps taken", `${job.points.length} of ${spec.steps}`],
      ["stopped early", job.stopped_early ? job.reason || "yes" : null],
      ["optimizer", `${spec.optimizer.name} ${params(spec.optimizer, ["name", "lr"])}`],
      ["batch size", spec.batch_size],
      ["smoothing", spec.smoothing],
      ["stop factor", spec.stop_factor],
      ["parameters", job.n_parameters?.toLocaleString()],
      ["time", job.seconds ? `${job.seconds.toFixed(1)} s` : null],
      ["error", job.error],
    ])),
  );
}

// Every rule's pick, the default (the one marked on the chart) first; docs/lr-finder.md measures them.
function suggestionsCard(suggestions) {
  if (!suggestions.length) return [];  // a job run before the rules were reported
  return [h("section", { class: "card" }, h("h3", {}, "Suggestions by rule"),
    h("table", { class: "compact", dataset: { role: "suggestions" } },
      h("tbody", {}, suggestions.map((s, i) => h("tr", { dataset: { name: s.name } },
        h("th", {}, s.name, i === 0 ? " (default)" : ""),
        h("td", { class: "num", dataset: { role: "suggestion-lr" } }, s.lr === null ? "none" : fmt(s.lr, 3)),
      )))),
    h("ul", { class: "muted" }, suggestions.map((s) => h("li", {}, s.rule))),
  )];
}
