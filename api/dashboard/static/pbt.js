// A population (PBT): every member's curve with the exploits marked, the best member's discovered lr schedule
// (its weights' whole history, inherited epochs included), the lineage and the members. Polls
// GET /v1/pbt/{id} once a second while the population trains: one call carries members, lineage and best.

import { ApiError, api } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import {
  FINISHED, datasetRef, errorBox, facts, fmt, h, params, pct, setTitle, shortId, sleep, statusBadge, when,
} from "./dom.js";

const POLL_MS = 1000;
const CURVES = ["val_accuracy", "val_loss", "train_accuracy", "train_loss"];
const DASHES = ["", "6 4", "2 3", "9 3 2 3"]; // past the palette's ten colours, members differ by dash too

const memberColor = (k) => PALETTE[k % PALETTE.length];
const memberDash = (k) => DASHES[Math.floor(k / PALETTE.length) % DASHES.length];

export async function pbtPage(app, id) {
  const view = new PopulationView(app, await api(`/v1/pbt/${id}`));
  setTitle(`Population ${shortId(id)}`);
  view.draw();
  while (!FINISHED.has(view.pbt.status)) {
    await sleep(POLL_MS);
    try {
      view.pbt = await api(`/v1/pbt/${id}`);
      view.notice.replaceChildren();
    } catch (error) {
      if (error instanceof ApiError && error.status < 500) throw error;
      view.notice.replaceChildren(h("p", { class: "muted" }, `Live updates interrupted (${error.message}); retrying…`));
      continue;
    }
    view.draw();
  }
}

/** The page's parts, laid out once and redrawn from each answer of GET /v1/pbt/{id}. */
class PopulationView {
  constructor(app, pbt) {
    this.pbt = pbt;
    this.metric = "val_accuracy";
    this.bestShown = null; // the best card is redrawn only when the best member or its schedule changes
    this.curves = new LineChart({
      name: "members", title: "Every member per epoch · exploits marked", yLabel: this.metric, yClamp: [0, 1],
      logToggle: true,
    });
    this.schedule = new LineChart({
      name: "schedule", title: "Discovered lr schedule · the best member's weights, inherited epochs included",
      yLabel: "lr", empty: "no interval finished yet",
    });
    this.schedule.setLogY(true);
    this.header = h("div", { class: "page-head" });
    this.notice = h("div", { class: "notice" });
    this.progress = h("div", { class: "progress" });
    this.best = h("section", { class: "card", dataset: { role: "best" } });
    this.settings = h("section", { class: "card" });
    this.lineage = h("div", { class: "table-wrap" });
    this.members = h("div", { class: "table-wrap" });
    app.replaceChildren(...this.layout());
  }

  layout() {
    return [
      this.header,
      this.notice,
      this.progress,
      h("div", { class: "run-layout" },
        h("div", { class: "charts" },
          h("div", { class: "controls" }, h("label", { class: "control" }, "curve ", this.metricPicker())),
          this.curves.element,
          this.schedule.element),
        h("div", { class: "side" }, this.best, this.settings)),
      h("h2", {}, "Members"),
      this.members,
      h("h2", {}, "Lineage"),
      h("p", { class: "hint" }, "After each interval the bottom members take the weights and optimizer state of a top ",
        "member, then explore its hyperparameters: each one perturbed by a factor or resampled afresh."),
      this.lineage,
    ];
  }

  metricPicker() {
    const picker = h("select", { name: "metric", dataset: { role: "metric" } },
      CURVES.map((m) => h("option", { value: m, selected: m === this.metric }, m)));
    picker.addEventListener("change", () => {
      this.metric = picker.value;
      this.curves.opts.yLabel = this.metric;
      this.curves.opts.yClamp = this.metric.endsWith("accuracy") ? [0, 1] : undefined;
      this.draw();
    });
    return picker;
  }

  draw() {
    const { pbt } = this;
    this.drawHeader();
    this.drawProgress();
    this.drawCurves();
    this.drawSchedule();
    this.members.replaceChildren(membersTable(pbt));
    this.lineage.replaceChildren(lineageTable(pbt.lineage));
    this.settings.replaceChildren(h("h3", {}, "Settings"), settingsFacts(pbt));
    const shown = JSON.stringify([pbt.status, pbt.best]);
    if (shown !== this.bestShown) {
      this.bestShown = shown;
      bestCard(this.best, pbt).catch((error) => this.best.append(errorBox(error)));
    }
  }

  drawHeader() {
    const { pbt } = this;
    const { spec } = pbt;
    this.header.replaceChildren(
      h("h1", {}, "Population ", h("span", { class: "mono" }, shortId(pbt.id)), " ", statusBadge(pbt.status)),
      h("p", { class: "subtitle" }, `${pbt.name} · ${spec.population} members · `,
        `${spec.base.optimizer.name} on `, datasetRef(spec.base.dataset), ` · ${spec.base.model.name}`),
      FINISHED.has(pbt.status)
        ? ""
        : h("button", { type: "button", class: "secondary", onclick: () => this.cancel() }, "Cancel population"),
    );
  }

  drawProgress() {
    const { spec, members, epochs_completed: completed } = this.pbt;
    const done = Math.min(...members.map((m) => m.points.length));
    const rounds = Math.ceil(spec.epochs / spec.interval);
    this.progress.replaceChildren(
      h("div", { class: "bar" }, h("span", { style: `width:${Math.min(100, (100 * done) / spec.epochs)}%` })),
      h("span", { dataset: { role: "epochs" } },
        `epoch ${done} / ${spec.epochs} · round ${Math.ceil(completed / spec.interval)} / ${rounds}`),
    );
  }

  drawCurves() {
    const { pbt, metric } = this;
    this.curves.opts.xDomain = [1, Math.max(2, pbt.spec.epochs)];
    const leader = pbt.best?.member;
    this.curves.setData(
      pbt.members.map((m) => ({
        id: `member-${m.member}`,
        label: `member ${m.member}${m.member === leader ? " (best)" : ""}`,
        metric,
        color: memberColor(m.member),
        dash: memberDash(m.member),
        points: m.points.map((p) => ({ x: p.epoch, y: p[metric] })),
      })),
      exploitMarkers(pbt.lineage),
    );
  }

  drawSchedule() {
    // A step line: the lr of epoch e holds from e-1 to e. Markers where the weights' history changes hands.
    const { pbt } = this;
    const followed = pbt.best ? pbt.best.schedule : [];
    const baseLr = pbt.spec.base.optimizer.lr;
    const points = followed.flatMap((f) => {
      const lr = f.values.lr ?? baseLr;
      return [{ x: f.epoch - 1, y: lr }, { x: f.epoch, y: lr }];
    });
    const markers = [];
    followed.forEach((f, i) => {
      const before = followed[i - 1];
      if (before && before.member !== f.member) {
        markers.push({ x: f.epoch - 1, label: `weights of member ${before.member} → ${f.member}` });
      }
    });
    this.schedule.opts.xDomain = [0, Math.max(1, pbt.spec.epochs)];
    const who = pbt.best ? pbt.best.member : 0;
    this.schedule.setData(
      [{ id: "lr", label: `lr (best: member ${who})`, metric: "lr", color: memberColor(who), points }],
      markers,
    );
  }

  async cancel() {
    try {
      this.pbt = await api(`/v1/pbt/${this.pbt.id}/cancel`, { method: "POST" });
      this.draw();
    } catch (error) {
      this.notice.replaceChildren(errorBox(error));
    }
  }
}

/** One marker per round: "exploit 1←2, 3←0" after the epoch it followed. */
function exploitMarkers(events) {
  const byEpoch = new Map();
  for (const e of events) byEpoch.set(e.epoch, [...(byEpoch.get(e.epoch) || []), `${e.target}←${e.source}`]);
  return [...byEpoch].map(([epoch, moves]) => ({ x: epoch, label: `exploit ${moves.join(", ")}` }));
}

/** "lr 0.001 → 0.0012" per explored hyperparameter, tagged perturbed or resampled. */
function changes(e) {
  return h("ul", { class: "changes" }, Object.entries(e.new).map(([k, v]) =>
    h("li", {}, `${k} ${fmt(e.old[k])} → ${fmt(v)} `,
      h("span", { class: `tag${e.resampled.includes(k) ? " resampled" : ""}` },
        e.resampled.includes(k) ? "resampled" : "perturbed"))));
}

function lineageTable(events) {
  if (!events.length) return h("p", { class: "muted pad" }, "No exploits yet: they happen after each interval.");
  return h("table", { dataset: { role: "lineage" } },
    h("thead", {}, h("tr", {},
      h("th", { class: "num" }, "after epoch"), h("th", {}, "target ← source"), h("th", {}, "hyperparameters"),
    )),
    h("tbody", {}, events.map((e) =>
      h("tr", { dataset: { epoch: e.epoch, target: e.target, source: e.source } },
        h("td", { class: "num" }, e.epoch),
        h("td", {}, swatch(e.target), `member ${e.target} ← `, swatch(e.source), `member ${e.source}`),
        h("td", {}, changes(e)),
      ))),
  );
}

function swatch(k) {
  return h("span", { class: `swatch${memberDash(k) ? " dashed" : ""}`, style: `border-color:${memberColor(k)}` });
}

function membersTable(pbt) {
  const leader = pbt.best?.member;
  const exploited = (k) => pbt.lineage.filter((e) => e.target === k).length;
  return h("table", { dataset: { role: "members" } },
    h("thead", {}, h("tr", {},
      h("th", {}, "member"), h("th", {}, "status"), h("th", { class: "num" }, "epochs"), h("th", {}, "hyperparameters now"),
      h("th", { class: "num" }, "val acc"), h("th", { class: "num" }, "times replaced"), h("th", {}, "run"),
    )),
    h("tbody", {}, pbt.members.map((m) => {
      const last = m.points.length ? m.points[m.points.length - 1] : null;
      const accuracy = m.summary?.final_val_accuracy ?? last?.val_accuracy;
      return h("tr", { dataset: { member: m.member, runId: m.run_id } },
        h("td", {}, swatch(m.member), `member ${m.member}`, m.member === leader ? h("span", { class: "tag best" }, "best") : ""),
        h("td", {}, statusBadge(m.status)),
        h("td", { class: "num" }, `${m.points.length}/${pbt.spec.epochs}`),
        h("td", { class: "mono" }, params(m.hyperparameters, [])),
        h("td", { class: "num" }, pct(accuracy)),
        h("td", { class: "num" }, exploited(m.member)),
        h("td", {}, h("a", { href: `/runs/${m.run_id}`, class: "mono" }, shortId(m.run_id))),
      );
    })),
  );
}

function describeMutation(space) {
  if (space.log_uniform) return `log-uniform ${fmt(space.log_uniform[0])} – ${fmt(space.log_uniform[1])}`;
  if (space.uniform) return `uniform ${fmt(space.uniform[0])} – ${fmt(space.uniform[1])}`;
  return `one of ${space.choices.map((v) => fmt(v)).join(", ")}`;
}

function settingsFacts(pbt) {
  const { spec } = pbt;
  const base = spec.base;
  return facts([
    ["name", pbt.name],
    ["members", spec.population],
    ["epochs", `${spec.epochs}, exploit every ${spec.interval}`],
    ["ranked by", `${spec.metric} (${spec.mode})`],
    ["bottom copies top", `${pct(spec.quantile)} of members`],
    ...Object.entries(spec.mutations).map(([k, space]) => [`searches ${k}`, describeMutation(space)]),
    ["perturbed by", spec.perturbation_factors.map((f) => `×${fmt(f)}`).join(" or ")],
    ["resampled with p", fmt(spec.resample_probability)],
    ["seed", spec.seed],
    ["execution", pbt.execution],
    ["dataset", datasetRef(base.dataset)],
    ["model", `${base.model.name} ${params(base.model)}`],
    ["optimizer", `${base.optimizer.name} ${params(base.optimizer)}`],
    ["batch size", base.batch_size],
    ["device", base.device],
    ["created", when(pbt.created_at)],
    ["started", pbt.started_at && when(pbt.started_at)],
    ["finished", pbt.finished_at && when(pbt.finished_at)],
    ["error", pbt.error],
  ]);
}

/** Consecutive epochs the weights trained as one member with the same values: [{first, last, member, values}]. */
function segments(followed) {
  const out = [];
  for (const f of followed) {
    const prev = out[out.length - 1];
    if (prev && prev.member === f.member && JSON.stringify(prev.values) === JSON.stringify(f.values)) prev.last = f.epoch;
    else out.push({ first: f.epoch, last: f.epoch, member: f.member, values: f.values });
  }
  return out;
}

async function bestCard(card, pbt) {
  const b = pbt.best;
  if (!b) {
    card.replaceChildren(h("h3", {}, "Best member"),
      h("p", { class: "muted" }, FINISHED.has(pbt.status) ? "No member finished an interval." : "Known after the first interval."));
    return;
  }
  const path = `/v1/pbt/${pbt.id}/schedule`;
  const json = h("pre", { class: "json", dataset: { role: "schedule-json" } }, "…");
  const status = h("span", { class: "muted", dataset: { role: "copy-state" } });
  const copy = h("button", { type: "button", class: "secondary", dataset: { role: "copy-schedule" } }, "Copy schedule");
  const replay = h("button", { type: "button", dataset: { role: "replay" } }, "Train it from scratch");
  card.replaceChildren(
    h("h3", {}, "Best member"),
    facts([
      ["member", h("span", {}, swatch(b.member), `member ${b.member} · `, h("a", { href: `/runs/${b.run_id}`, class: "mono" }, shortId(b.run_id)))],
      [pbt.spec.metric, `${fmt(b.score)} at epoch ${b.epoch}`],
      ["val accuracy", pbt.spec.metric !== "val_accuracy" && pct(b.val_accuracy)],
    ]),
    h("h4", {}, "Its lr schedule"),
    h("table", { class: "compact", dataset: { role: "schedule" } },
      h("thead", {}, h("tr", {}, h("th", {}, "epochs"), h("th", {}, "values"), h("th", {}, "trained as"))),
      h("tbody", {}, segments(b.schedule).map((s) =>
        h("tr", {},
          h("td", {}, s.first === s.last ? `${s.first}` : `${s.first}–${s.last}`),
          h("td", { class: "mono" }, params(s.values, [])),
          h("td", {}, swatch(s.member), `member ${s.member}`))))),
    h("div", { class: "actions" }, copy, " ", replay, " ", status),
    h("details", {}, h("summary", {}, h("a", { href: path, dataset: { role: "schedule-link" } }, path)), json),
  );
  const found = await api(path);
  const text = JSON.stringify(found, null, 2);
  json.textContent = text;
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "copied";
    } catch {
      json.parentElement.open = true; // no clipboard (an insecure origin): select it by hand
      status.textContent = "select the JSON below";
    }
  });
  replay.addEventListener("click", async () => {
    replay.disabled = true;
    try {
      const run = await api("/v1/runs", { method: "POST", body: found.run });
      location.href = `/runs/${run.id}`;
    } catch (error) {
      replay.disabled = false;
      card.append(errorBox(error));
    }
  });
}
