// The home page: recent runs (filter by status and optimizer), experiments, populations (PBT), lr range tests,
// and the form that submits a run (POST /v1/runs) or a grid (POST /v1/experiments) and opens its page.

import { api } from "./api.js";
import {
  FINISHED, STATUSES, datasetRef, describeSpec, errorBox, fmt, h, pct, setTitle, shortId, statusBadge, when,
} from "./dom.js";

const REFRESH_MS = 4000;

export async function homePage(app) {
  setTitle("Runs & experiments");
  const query = new URLSearchParams(location.search);
  const filters = { status: query.get("status") || "", optimizer: query.get("optimizer") || "" };
  const selected = new Set();
  const catalog = await api("/v1/catalog");

  const runsBox = h("div", { class: "table-wrap" });
  const experimentsBox = h("div", { class: "table-wrap" });
  const findersBox = h("div");
  const pbtsBox = h("div");
  const searchesBox = h("div");
  const adviceBox = h("div");
  const compareButton = h("button", { type: "button", class: "secondary", disabled: true }, "Compare selected");
  compareButton.addEventListener("click", () => {
    location.href = `/compare?runs=${[...selected].join(",")}`;
  });

  const filterSelect = (name, values) =>
    h(
      "select",
      {
        name,
        onchange: (e) => {
          filters[name] = e.target.value;
          const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
          history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
          refresh();
        },
      },
      h("option", { value: "" }, `any ${name}`),
      values.map((v) => h("option", { value: v, selected: v === filters[name] }, v)),
    );

  app.replaceChildren(
    h("div", { class: "home" },
      h("section", { class: "lists" },
        h("div", { class: "section-head" },
          h("h2", {}, "Runs"),
          h("div", { class: "filters" },
            filterSelect("status", STATUSES),
            filterSelect("optimizer", catalog.optimizers.map((o) => o.name)),
            compareButton,
          ),
        ),
        runsBox,
        h("h2", {}, "Experiments"),
        experimentsBox,
        adviceBox,
        pbtsBox,
        searchesBox,
        findersBox,
      ),
      h("aside", { class: "side" }, submitForm(catalog, query)),
    ),
  );

  async function refresh() {
    const q = new URLSearchParams({ limit: "50", ...Object.fromEntries(Object.entries(filters).filter(([, v]) => v)) });
    const [runs, experiments, finders, pbts, advice] = await Promise.all([
      api(`/v1/runs?${q}`),
      api("/v1/experiments?limit=20"),
      api("/v1/lr-finder?limit=10"),
      api("/v1/pbt?limit=10"),
      api("/v1/advice?limit=10"),
    ]);
    const searches = await api("/v1/searches?limit=10");
    searchesBox.replaceChildren(
      ...(searches.data.length ? [h("h2", {}, "Searches"), h("div", { class: "table-wrap" }, searchesTable(searches.data))] : []),
    );
    runsBox.replaceChildren(runsTable(runs.data, selected, compareButton));
    experimentsBox.replaceChildren(experimentsTable(experiments.data));
    findersBox.replaceChildren(
      ...(finders.data.length ? [h("h2", {}, "LR range tests"), h("div", { class: "table-wrap" }, findersTable(finders.data))] : []),
    );
    pbtsBox.replaceChildren(
      ...(pbts.data.length ? [h("h2", {}, "Populations"), h("div", { class: "table-wrap" }, pbtsTable(pbts.data))] : []),
    );
    adviceBox.replaceChildren(
      ...(advice.data.length ? [h("h2", {}, "Advice"), h("div", { class: "table-wrap" }, adviceTable(advice.data))] : []),
    );
    const active = [...runs.data, ...experiments.data, ...finders.data, ...pbts.data, ...advice.data, ...searches.data]
      .some((x) => !FINISHED.has(x.status));
    clearTimeout(refresh.timer);
    if (active) refresh.timer = setTimeout(() => refresh().catch(() => {}), REFRESH_MS);
  }
  await refresh();
}

function runsTable(runs, selected, compareButton) {
  if (!runs.length) return h("p", { class: "muted" }, "No runs yet: start one with the form.");
  const sync = () => {
    compareButton.disabled = selected.size === 0;
  };
  sync();
  return h("table", { dataset: { role: "runs" } },
    h("thead", {}, h("tr", {},
      h("th", {}, ""), h("th", {}, "run"), h("th", {}, "status"), h("th", {}, "label"),
      h("th", { class: "num" }, "epochs"), h("th", { class: "num" }, "best val acc"), h("th", {}, "created"),
    )),
    h("tbody", {}, runs.map((run) => {
      const box = h("input", {
        type: "checkbox",
        "aria-label": `select ${shortId(run.id)} to compare`,
        checked: selected.has(run.id),
        onchange: (e) => {
          if (e.target.checked) selected.add(run.id);
          else selected.delete(run.id);
          sync();
        },
      });
      const summary = run.summary || {};
      return h("tr", { dataset: { runId: run.id } },
        h("td", {}, box),
        h("td", {}, h("a", { href: `/runs/${run.id}`, class: "mono" }, shortId(run.id))),
        h("td", {}, statusBadge(run.status)),
        h("td", {}, run.label || h("span", { class: "muted" }, describeSpec(run.spec))),
        h("td", { class: "num" }, `${summary.epochs_completed ?? 0}/${run.spec.epochs}`),
        h("td", { class: "num" }, pct(summary.best_val_accuracy)),
        h("td", {}, when(run.created_at)),
      );
    })),
  );
}

function experimentsTable(experiments) {
  if (!experiments.length) return h("p", { class: "muted" }, "No experiments yet: list lrs or optimizers in the grid.");
  return h("table", { dataset: { role: "experiments" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "name"), h("th", {}, "status"), h("th", {}, "runs by status"), h("th", {}, "created"),
    )),
    h("tbody", {}, experiments.map((e) =>
      h("tr", { dataset: { experimentId: e.id } },
        h("td", {}, h("a", { href: `/experiments/${e.id}` }, e.name)),
        h("td", {}, statusBadge(e.status)),
        h("td", {}, Object.entries(e.counts).filter(([, n]) => n).map(([s, n]) =>
          h("span", { class: `count status-${s}` }, `${n} ${s}`))),
        h("td", {}, when(e.created_at)),
      ))),
  );
}

function adviceTable(list) {
  return h("table", { dataset: { role: "advice" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "name"), h("th", {}, "status"), h("th", {}, "stage"), h("th", {}, "recommendation"),
      h("th", {}, "created"),
    )),
    h("tbody", {}, list.map((a) =>
      h("tr", { dataset: { adviceId: a.id } },
        h("td", {}, h("a", { href: `/advice/${a.id}` }, a.name), " ", h("span", { class: "muted mono" }, shortId(a.id))),
        h("td", {}, statusBadge(a.status)),
        h("td", {}, a.stage.replace("_", " ")),
        h("td", {}, a.recommendation ? `${a.recommendation.label} · ${pct(a.recommendation.val_accuracy.mean)}` : "–"),
        h("td", {}, when(a.created_at)),
      ))),
  );
}

function searchesTable(searches) {
  return h("table", { dataset: { role: "searches" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "name"), h("th", {}, "status"), h("th", {}, "space"), h("th", { class: "num" }, "trials"),
      h("th", {}, "sampler"), h("th", {}, "created"),
    )),
    h("tbody", {}, searches.map((s) =>
      h("tr", { dataset: { searchId: s.id } },
        h("td", {}, h("a", { href: `/searches/${s.id}` }, s.name), " ", h("span", { class: "muted mono" }, shortId(s.id))),
        h("td", {}, statusBadge(s.status)),
        h("td", {}, Object.keys(s.spec.space).join(", ")),
        h("td", { class: "num" }, s.spec.trials),
        h("td", {}, s.spec.sampler + (s.spec.early_stopping ? " + ASHA" : "")),
        h("td", {}, when(s.created_at)),
      ))),
  );
}

function pbtsTable(populations) {
  return h("table", { dataset: { role: "pbts" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "name"), h("th", {}, "status"), h("th", {}, "searches"), h("th", { class: "num" }, "epochs"),
      h("th", {}, "best member"), h("th", {}, "created"),
    )),
    h("tbody", {}, populations.map((p) =>
      h("tr", { dataset: { pbtId: p.id } },
        h("td", {}, h("a", { href: `/pbt/${p.id}` }, p.name), " ", h("span", { class: "muted mono" }, shortId(p.id))),
        h("td", {}, statusBadge(p.status)),
        h("td", {}, `${p.spec.population} × ${Object.keys(p.spec.mutations).join(", ")} · ${p.spec.base.optimizer.name}`),
        h("td", { class: "num" }, `${p.epochs_completed}/${p.spec.epochs}`),
        h("td", {}, p.best ? `member ${p.best.member} · ${pct(p.best.val_accuracy)}` : "–"),
        h("td", {}, when(p.created_at)),
      ))),
  );
}

function findersTable(jobs) {
  return h("table", { dataset: { role: "lr-finders" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "job"), h("th", {}, "status"), h("th", {}, "setup"), h("th", { class: "num" }, "suggested lr"),
      h("th", {}, "created"),
    )),
    h("tbody", {}, jobs.map((j) =>
      h("tr", {},
        h("td", {}, h("a", { href: `/lr-finder/${j.id}`, class: "mono" }, shortId(j.id))),
        h("td", {}, statusBadge(j.status)),
        h("td", {}, `${j.spec.optimizer.name} · `, datasetRef(j.spec.dataset), ` · ${j.spec.steps} steps`),
        h("td", { class: "num" }, fmt(j.suggested_lr)),
        h("td", {}, when(j.created_at)),
      ))),
  );
}

/** Numbers from "1e-3, 0.01 0.1"; throws naming the field when one isn't a number. */
function numberList(text, field) {
  const items = text.split(/[\s,;]+/).filter(Boolean);
  const values = items.map(Number);
  const bad = items.find((_, i) => !Number.isFinite(values[i]));
  if (bad !== undefined) throw new Error(`${field}: "${bad}" is not a number`);
  return values;
}

function submitForm(catalog, query) {
  const defaults = Object.fromEntries(catalog.optimizers.map((o) => [o.name, o.hyperparameters.lr.default]));
  const select = (name, values, chosen) =>
    h("select", { name, id: `f-${name}` }, values.map((v) => h("option", { value: v, selected: v === chosen }, v)));
  const field = (label, input, hint) => h("label", { class: "field" }, h("span", {}, label), input, hint && h("small", {}, hint));
  const number = (name, value, attrs = {}) => h("input", { type: "number", name, id: `f-${name}`, value, required: true, ...attrs });

  const optimizer = select("optimizer", catalog.optimizers.map((o) => o.name), query.get("optimizer") || "adam");
  const lr = number("lr", defaults[optimizer.value], { step: "any", min: "0" });
  let lrEdited = false;
  lr.addEventListener("input", () => {
    lrEdited = true;
  });
  optimizer.addEventListener("change", () => {
    if (!lrEdited) lr.value = defaults[optimizer.value];
  });
  const errors = h("div", { class: "form-errors" });

  const form = h("form", { class: "card submit", id: "submit-form", novalidate: true },
    h("h2", {}, "New run"),
    h("div", { class: "field-grid" },
      field("dataset", select("dataset", catalog.datasets.map((d) => d.name), query.get("dataset") || "digits")),
      // a layer list needs its layers: submitted as JSON (README, "Train your own model"), not from this form
      field("model", select("model", catalog.models.filter((m) => m.name !== "sequential").map((m) => m.name), "mlp")),
      field("optimizer", optimizer),
      field("lr", lr),
      field("epochs", number("epochs", 5, { min: "1", max: "10000" })),
      field("batch size", number("batch_size", 64, { min: "1" })),
      field("seed", number("seed", 0, { min: "0" })),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit", dataset: { action: "run" } }, "Start run")),
    h("h2", {}, "Or a grid"),
    h("p", { class: "hint" }, "One run per combination of the lists below; the fields above are the base. ",
      "Listed optimizers use their default lr unless lrs are listed too."),
    field("experiment name", h("input", { type: "text", name: "name", id: "f-name", placeholder: "e.g. adam lrs" })),
    field("lrs", h("input", { type: "text", name: "grid_lr", id: "f-grid_lr", placeholder: "1e-4, 1e-3, 1e-2",
      value: query.get("grid_lr") || "" })),
    h("fieldset", { class: "checks" }, h("legend", {}, "optimizers"),
      catalog.optimizers.map((o) => h("label", {}, h("input", { type: "checkbox", name: "grid_optimizer", value: o.name }), o.name))),
    field("seeds", h("input", { type: "text", name: "grid_seed", id: "f-grid_seed", placeholder: "0, 1, 2" })),
    h("div", { class: "actions" }, h("button", { type: "submit", dataset: { action: "grid" } }, "Start grid")),
    errors,
  );
  if (query.get("grid_lr")) setTimeout(() => form.querySelector("#f-grid_lr").scrollIntoView(), 0);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const action = event.submitter?.dataset.action || "run";
    const data = new FormData(form);
    errors.replaceChildren();
    event.submitter?.parentElement.after(errors); // the message shows next to the button that was pressed
    const buttons = form.querySelectorAll("button[type=submit]");
    try {
      const spec = {
        dataset: data.get("dataset"),
        model: data.get("model"),
        optimizer: { name: data.get("optimizer"), lr: numberList(String(data.get("lr")), "lr")[0] },
        epochs: Number(data.get("epochs")),
        batch_size: Number(data.get("batch_size")),
        seed: Number(data.get("seed")),
      };
      buttons.forEach((b) => (b.disabled = true));
      if (action === "run") {
        const created = await api("/v1/runs", { method: "POST", body: spec });
        location.href = `/runs/${created.id}`;
        return;
      }
      const grid = {};
      const lrs = numberList(String(data.get("grid_lr")), "lrs");
      const optimizers = data.getAll("grid_optimizer");
      const seeds = numberList(String(data.get("grid_seed")), "seeds");
      if (lrs.length) grid.lr = lrs;
      if (optimizers.length) grid.optimizer = optimizers.map((name) => ({ name }));
      if (seeds.length) grid.seed = seeds;
      if (!Object.keys(grid).length) throw new Error("a grid needs lrs, optimizers or seeds");
      const name = String(data.get("name")).trim() || autoName(spec, grid);
      const created = await api("/v1/experiments", { method: "POST", body: { name, base: spec, grid } });
      location.href = `/experiments/${created.id}`;
    } catch (error) {
      errors.replaceChildren(errorBox(error));
      buttons.forEach((b) => (b.disabled = false));
    }
  });
  return form;
}

function autoName(spec, grid) {
  const parts = [];
  if (grid.optimizer) parts.push(grid.optimizer.map((o) => o.name).join("/"));
  else parts.push(spec.optimizer.name);
  if (grid.lr) parts.push(`lr ${grid.lr.map((v) => fmt(v)).join(", ")}`);
  if (grid.seed) parts.push(`${grid.seed.length} seeds`);
  return `${parts.join(" · ")} on ${spec.dataset}`;
}
