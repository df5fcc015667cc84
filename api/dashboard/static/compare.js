// Overlaid curves of several runs (the article's figures) and the compare table with its verdict: for an
// experiment (/experiments/{id}, from /v1/experiments/{id}/compare) or any runs (/compare?runs=a,b,c).

import { api } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import {
  FINISHED, METRICS, describeSpec, errorBox, fmt, h, pct, setTitle, shortId, statusBadge,
} from "./dom.js";

const POLL_MS = 2000;

export async function experimentPage(app, id) {
  const first = await api(`/v1/experiments/${id}`);
  setTitle(first.name);
  await compareView(app, {
    // Colours follow grid order, which never changes; the compare ranking does, as runs train.
    order: first.runs.map((r) => r.id),
    load: async (query) => {
      const [experiment, comparison] = await Promise.all([
        api(`/v1/experiments/${id}`),
        api(`/v1/experiments/${id}/compare?${query}`),
      ]);
      return { experiment, comparison, done: experiment.status === "finished" };
    },
    head: ({ experiment }) => [
      h("h1", {}, experiment.name, " ", statusBadge(experiment.status)),
      h("p", { class: "subtitle" },
        Object.entries(experiment.counts).filter(([, n]) => n).map(([s, n]) => h("span", { class: `count status-${s}` }, `${n} ${s}`)),
        " · base ", describeSpec(experiment.base), " · grid ",
        Object.entries(experiment.grid).map(([k, v]) => `${k}: ${v.map((x) => (typeof x === "object" ? x.name || x.kind : fmt(x))).join(", ")}`).join(" × "),
      ),
    ],
  });
}

export async function comparePage(app, ids) {
  setTitle("Compare runs");
  if (!ids.length) {
    app.replaceChildren(h("p", {}, "Name runs to compare: /compare?runs=ID1,ID2 (or tick them on the home page)."));
    return;
  }
  await compareView(app, {
    order: ids,
    load: async (query) => {
      const comparison = await api(`/v1/compare?runs=${ids.map(encodeURIComponent).join(",")}&${query}`);
      return { comparison, done: comparison.runs.every((r) => FINISHED.has(r.status)) };
    },
    head: ({ comparison }) => [
      h("h1", {}, `Comparing ${comparison.runs.length} runs`),
      h("p", { class: "subtitle" }, "Any runs, across experiments; ranked by the metric below."),
    ],
  });
}

async function compareView(app, { order, load, head }) {
  const state = { split: "val", metric: "best_val_accuracy", target: "" };
  const accuracy = new LineChart({ name: "accuracy", title: "Accuracy", yLabel: "accuracy", yClamp: [0, 1] });
  const loss = new LineChart({ name: "loss", title: "Loss", yLabel: "loss", logToggle: true });
  const header = h("div", { class: "page-head" });
  const tables = h("div", { class: "compare-tables" });
  const notice = h("div", { class: "notice" });
  let data = null;
  let timer = null;

  const radio = (value) =>
    h("label", {}, h("input", {
      type: "radio", name: "split", value, checked: state.split === value,
      onchange: () => { state.split = value; draw(); },
    }), ` ${value}`);
  const controls = h("div", { class: "controls" },
    h("span", { class: "control" }, "curves: ", radio("val"), radio("train")),
    h("label", { class: "control" }, "rank by ",
      h("select", { name: "metric", onchange: (e) => { state.metric = e.target.value; refresh(); } },
        METRICS.map((m) => h("option", { value: m, selected: m === state.metric }, m)))),
    h("label", { class: "control" }, "target accuracy ",
      h("input", { type: "number", name: "target", min: "0", max: "1", step: "0.01", placeholder: "e.g. 0.9",
        onchange: (e) => { state.target = e.target.value; refresh(); } })),
  );
  app.replaceChildren(header, notice, controls, h("div", { class: "charts two" }, accuracy.element, loss.element), tables);

  function colour(runId) {
    const i = order.indexOf(runId);
    return PALETTE[(i < 0 ? order.length : i) % PALETTE.length];
  }

  function draw() {
    const runs = [...data.comparison.runs].sort((a, b) => order.indexOf(a.run_id) - order.indexOf(b.run_id));
    const series = (kind) => runs.map((r) => ({
      id: r.run_id,
      label: r.label || shortId(r.run_id),
      color: colour(r.run_id),
      metric: `${state.split}_${kind}`,
      points: r.points.map((p) => ({ x: p.epoch, y: p[`${state.split}_${kind}`] })),
    }));
    accuracy.setData(series("accuracy"));
    loss.setData(series("loss"));
    header.replaceChildren(...head(data));
    tables.replaceChildren(rankTable(data.comparison, colour), groupsTable(data.comparison), verdictBox(data.comparison));
  }

  async function refresh() {
    clearTimeout(timer);
    const query = new URLSearchParams({ metric: state.metric, max_points: "500" });
    if (state.target !== "") query.set("target", state.target);
    try {
      data = await load(query);
      notice.replaceChildren();
      draw();
    } catch (error) {
      notice.replaceChildren(errorBox(error));
      if (!data) return;
    }
    if (!data.done) timer = setTimeout(refresh, POLL_MS);
  }
  await refresh();
}

function rankTable(comparison, colour) {
  const target = comparison.target != null;
  return h("section", {},
    h("h2", {}, `Ranked by ${comparison.metric} (${comparison.mode === "max" ? "higher" : "lower"} is better)`),
    h("div", { class: "table-wrap" }, h("table", { dataset: { role: "compare" } },
      h("thead", {}, h("tr", {},
        h("th", { class: "num" }, "#"), h("th", {}, "run"), h("th", {}, "status"), h("th", {}, "optimizer"), h("th", { class: "num" }, "seed"),
        h("th", { class: "num" }, "best val acc"), h("th", { class: "num" }, "best epoch"),
        h("th", { class: "num" }, "final val acc"), h("th", { class: "num" }, "min val loss"),
        target && h("th", { class: "num" }, `epochs to ${pct(comparison.target)}`),
        h("th", { class: "num" }, "seconds"), h("th", {}, "diverged / stopped"),
      )),
      h("tbody", {}, comparison.runs.map((r, i) => {
        const s = r.summary || {};
        return h("tr", { dataset: { runId: r.run_id } },
          h("td", { class: "num" }, i + 1),
          h("td", {}, h("span", { class: "swatch", style: `border-color:${colour(r.run_id)}` }),
            h("a", { href: `/runs/${r.run_id}` }, r.label || shortId(r.run_id))),
          h("td", {}, statusBadge(r.status)),
          h("td", {}, `${r.spec.optimizer.name} lr=${fmt(r.spec.optimizer.lr)}`),
          h("td", { class: "num" }, r.spec.seed),
          h("td", { class: "num" }, pct(s.best_val_accuracy)),
          h("td", { class: "num" }, s.best_epoch ?? "–"),
          h("td", { class: "num" }, pct(s.final_val_accuracy)),
          h("td", { class: "num" }, fmt(s.min_val_loss)),
          target && h("td", { class: "num" }, s.epochs_to_target ?? "–"),
          h("td", { class: "num" }, s.seconds ? s.seconds.toFixed(1) : "–"),
          h("td", {}, s.diverged_at ? `diverged, epoch ${s.diverged_at}`
            : s.stopped_at ? `stopped at epoch ${s.stopped_at}` : ""),
        );
      })),
    )),
  );
}

function groupsTable(comparison) {
  if (!comparison.groups.length) return "";
  return h("section", {},
    h("h2", {}, `Over seeds: ${comparison.metric}`),
    h("div", { class: "table-wrap" }, h("table", { dataset: { role: "groups" } },
      h("thead", {}, h("tr", {},
        h("th", {}, "configuration"), h("th", { class: "num" }, "seeds"), h("th", { class: "num" }, "mean ± std"),
      )),
      h("tbody", {}, comparison.groups.map((g) => h("tr", {},
        h("td", {}, g.label),
        h("td", { class: "num" }, g.n),
        h("td", { class: "num" }, g.mean == null ? "–" : `${fmt(g.mean)} ± ${g.std == null ? "–" : fmt(g.std)}`),
      ))),
    )),
  );
}

function verdictBox(comparison) {
  const v = comparison.verdict;
  if (!v) return "";
  const interval = v.ci_low != null
    ? ` (${Math.round(v.confidence * 100)}% CI ${fmt(v.ci_low)} to ${fmt(v.ci_high)}, ${v.method}` +
      `${v.n_pairs ? `, ${v.n_pairs} paired seeds` : `, n=${v.n_better}/${v.n_other}`})`
    : "";
  return h("section", { class: `card verdict ${v.significant ? "significant" : "not-significant"}`, dataset: { role: "verdict" } },
    h("h2", {}, "Verdict"),
    h("p", {},
      h("strong", {}, v.better), " vs ", h("strong", {}, v.other), ": ",
      v.difference == null ? "no difference could be computed" : `difference ${fmt(v.difference)} in ${v.metric}${interval}`,
      " — ", h("strong", {}, v.significant ? "significant" : "not significant"), "."),
    v.note && h("p", { class: "muted" }, v.note),
  );
}
