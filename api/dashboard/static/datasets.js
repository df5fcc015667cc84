// One uploaded dataset: what it holds (GET /v1/datasets/{id}) and the runs trained on it
// (GET /v1/runs?dataset=upload:{id}).

import { api } from "./api.js";
import { describeSpec, facts, fmt, h, pct, setTitle, shortId, statusBadge, when } from "./dom.js";

export async function datasetPage(app, id) {
  const path = `/v1/datasets/${encodeURIComponent(id)}`;
  const [dataset, runs] = await Promise.all([
    api(path),
    api(`/v1/runs?${new URLSearchParams({ dataset: `upload:${id}`, limit: "50" })}`),
  ]);
  setTitle(`Dataset ${dataset.name}`);
  app.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", {}, "Dataset ", h("span", { dataset: { role: "dataset-name" } }, dataset.name)),
      h("p", { class: "subtitle" }, h("span", { class: "mono" }, shortId(dataset.id)),
        ` · ${dataset.kind} · ${dataset.n_samples.toLocaleString()} samples · ${dataset.n_classes} classes`)),
    h("div", { class: "run-layout" },
      h("div", {},
        h("h2", {}, "Runs on it"),
        h("div", { class: "table-wrap" }, runsTable(runs.data))),
      h("div", { class: "side" },
        h("section", { class: "card" }, h("h3", {}, "Dataset"), facts([
          ["name", dataset.name],
          ["kind", dataset.kind],
          ["samples", dataset.n_samples.toLocaleString()],
          ["classes", dataset.class_names ? dataset.class_names.join(", ") : dataset.n_classes],
          ["label column", dataset.label_column],
          ["input shape", dataset.input_shape.join(" × ")],
          ["size", `${fmt(dataset.size_bytes / 1024, 3)} KiB`],
          ["sha256", h("span", { class: "mono" }, dataset.sha256.slice(0, 16), "…")],
          ["uploaded", when(dataset.created_at)],
          ["in a run spec", h("code", {}, JSON.stringify({ dataset: { id: dataset.id } }))],
        ]),
        h("p", {}, h("a", { href: path, dataset: { role: "dataset-json" } }, "as JSON"))),
      ),
    ),
  );
}

function runsTable(runs) {
  if (!runs.length) return h("p", { class: "muted" }, "No runs on this dataset yet.");
  return h("table", { dataset: { role: "runs" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "run"), h("th", {}, "status"), h("th", {}, "setup"), h("th", { class: "num" }, "epochs"),
      h("th", { class: "num" }, "best val acc"), h("th", {}, "created"),
    )),
    h("tbody", {}, runs.map((run) =>
      h("tr", { dataset: { runId: run.id } },
        h("td", {}, h("a", { href: `/runs/${run.id}`, class: "mono" }, shortId(run.id))),
        h("td", {}, statusBadge(run.status)),
        h("td", {}, run.label || describeSpec(run.spec)),
        h("td", { class: "num" }, `${run.summary?.epochs_completed ?? 0}/${run.spec.epochs}`),
        h("td", { class: "num" }, pct(run.summary?.best_val_accuracy)),
        h("td", {}, when(run.created_at)),
      ))),
  );
}
