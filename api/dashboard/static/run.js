// One run: status, spec, summary, and its accuracy and loss curves (train and val), updated live from the
// run's event stream (GET /v1/runs/{id}/events, read with fetch so it carries the key).

import { ApiError, api, streamEvents } from "./api.js";
import { LineChart, PALETTE } from "./chart.js";
import {
  FINISHED, datasetRef, describeSpec, errorBox, facts, fmt, h, params, pct, setTitle, shortId, sleep, statusBadge,
} from "./dom.js";

const RETRY_MS = 2000;
const WAITING_POLL_MS = 3000;

// A layer list as its types and arguments, a plugin's model as its name and parameters.
function modelText(model) {
  if (model.layers) return `sequential: ${model.layers.map(layerText).join(" → ")}`;
  if (model.params) return `${model.name} (plugin) ${params(model.params, [])}`;
  return `${model.name} ${params(model)}`;
}

function layerText(layer) {
  if (layer.type === "residual") return `residual(${layer.layers.map(layerText).join(" → ")})`;
  const args = params(Object.fromEntries(Object.entries(layer).filter(([, v]) => v !== null)), ["type"]);
  return args ? `${layer.type}(${args})` : layer.type;
}

export async function runPage(app, id) {
  let run = await api(`/v1/runs/${id}`);
  setTitle(`Run ${shortId(id)}`);
  const points = new Map(); // epoch -> point; a reopened stream replays what it already sent
  const accuracy = new LineChart({ name: "accuracy", title: "Accuracy", yLabel: "accuracy", yClamp: [0, 1] });
  const loss = new LineChart({ name: "loss", title: "Loss", yLabel: "loss", logToggle: true });
  const header = h("div", { class: "page-head" });
  const progress = h("div", { class: "progress" });
  const summary = h("section", { class: "card" });
  const spec = h("section", { class: "card" });
  const notice = h("div", { class: "notice" });
  app.replaceChildren(
    header,
    notice,
    progress,
    h("div", { class: "run-layout" },
      h("div", { class: "charts" }, accuracy.element, loss.element),
      h("div", { class: "side" }, summary, spec)),
  );

  const sorted = () => [...points.values()].sort((a, b) => a.epoch - b.epoch);

  function draw() {
    const pts = sorted();
    const last = pts.length ? pts[pts.length - 1].epoch : 0;
    // While training, the x axis spans every planned epoch so the curve grows into it.
    const xDomain = [1, Math.max(2, FINISHED.has(run.status) ? last : Math.max(last, run.spec.epochs))];
    const series = (kind) => [
      { id: "train", label: `train ${kind}`, metric: `train_${kind}`, color: PALETTE[1], dash: "6 4" },
      { id: "val", label: `val ${kind}`, metric: `val_${kind}`, color: PALETTE[0] },
    ].map((s) => ({ ...s, points: pts.map((p) => ({ x: p.epoch, y: p[s.metric] })) }));
    const diverged = run.summary?.diverged_at;
    const stopped = run.summary?.stopped_at;
    const markers = diverged ? [{ x: diverged, label: `diverged (epoch ${diverged})` }]
      : stopped ? [{ x: stopped, label: `stopped (epoch ${stopped}, successive halving)` }] : [];
    accuracy.opts.xDomain = xDomain;
    loss.opts.xDomain = xDomain;
    accuracy.setData(series("accuracy"), markers);
    loss.setData(series("loss"), markers);
    progress.replaceChildren(
      h("div", { class: "bar" }, h("span", { style: `width:${Math.min(100, (100 * last) / run.spec.epochs)}%` })),
      h("span", { dataset: { role: "epochs" } }, `epoch ${last} / ${run.spec.epochs}`),
    );
    summarise();
  }

  function summarise() {
    // A running run has no stored summary yet: work it out from the points streamed so far.
    const s = FINISHED.has(run.status) && run.summary ? run.summary : liveSummary(sorted());
    summary.replaceChildren(h("h3", {}, "Summary"), facts([
      ["best val accuracy", s.best_val_accuracy != null && `${pct(s.best_val_accuracy)} (epoch ${s.best_epoch})`],
      ["final val accuracy", s.final_val_accuracy != null && pct(s.final_val_accuracy)],
      ["min val loss", s.min_val_loss != null && fmt(s.min_val_loss)],
      ["epochs", `${s.epochs_completed ?? 0} of ${run.spec.epochs}`],
      ["time", s.seconds ? `${s.seconds.toFixed(1)} s` : null],
      ["diverged at", s.diverged_at && `epoch ${s.diverged_at}`],
      ["stopped at", s.stopped_at && `epoch ${s.stopped_at} (successive halving)`],
      ["why", s.reason],
      ["error", run.error],
    ]));
  }

  function describe() {
    header.replaceChildren(
      h("h1", {}, "Run ", h("span", { class: "mono" }, shortId(run.id)), " ", statusBadge(run.status)),
      h("p", { class: "subtitle" }, run.label || describeSpec(run.spec),
        run.experiment_id && [" · ", h("a", { href: `/experiments/${run.experiment_id}` }, "its experiment")]),
      run.status === "queued" && run.waiting_reason
        ? h("p", { class: "waiting", role: "status", dataset: { role: "waiting" } },
            h("strong", {}, "Waiting: "), run.waiting_reason)
        : "",
      FINISHED.has(run.status)
        ? ""
        : h("button", { type: "button", class: "secondary", onclick: cancel, disabled: run.cancel_requested },
            run.cancel_requested ? "Cancelling…" : "Cancel run"),
    );
    const s = run.spec;
    spec.replaceChildren(h("h3", {}, "Spec"), facts([
      ["dataset", datasetRef(s.dataset)],
      ["model", modelText(s.model)],
      ["optimizer", `${s.optimizer.name} ${params(s.optimizer)}`],
      ["schedule", `${s.schedule.kind} ${params(s.schedule)}`],
      ["epochs", s.epochs],
      ["batch size", s.batch_size],
      ["seed", s.seed],
      ["device", `${s.device}${run.device ? ` → ${run.device}` : ""} (queue ${run.queue})`],
      ["parameters", run.n_parameters?.toLocaleString()],
      ["trained", run.pack_id ? `fused (pack ${shortId(run.pack_id)})`
        : run.not_fused_reason && h("span", { dataset: { role: "not-fused" } }, `on its own: ${run.not_fused_reason}`)],
      ["patience", s.patience],
    ]));
    summarise();
  }

  async function cancel() {
    try {
      run = await api(`/v1/runs/${run.id}/cancel`, { method: "POST" });
      describe();
    } catch (error) {
      notice.replaceChildren(errorBox(error));
    }
  }

  // While queued, the reason it waits (no live worker for its queue) can come and go: look again now and then.
  async function watchWaiting() {
    while (run.status === "queued") {
      await sleep(WAITING_POLL_MS);
      const fresh = await api(`/v1/runs/${id}`).catch(() => null);
      if (fresh && run.status === "queued" && fresh.waiting_reason !== run.waiting_reason) {
        run = { ...run, waiting_reason: fresh.waiting_reason };
        describe();
      }
    }
  }

  describe();
  draw();
  watchWaiting();
  // The stream sends the points stored so far, then each new one, and ends when the run ends; a dropped
  // connection is reopened.
  let streamed = false;
  while (!streamed || !FINISHED.has(run.status)) {
    try {
      await streamEvents(`/v1/runs/${id}/events`, (type, data) => {
        if (type === "point") {
          points.set(data.epoch, data);
          draw();
        } else if (type === "status" && data.status !== run.status) {
          run = { ...run, status: data.status };
          describe();
        }
      });
      streamed = true;
      run = await api(`/v1/runs/${id}`); // the stored summary, timings and final status
      notice.replaceChildren();
    } catch (error) {
      if (error instanceof ApiError && error.status < 500) throw error;
      notice.replaceChildren(h("p", { class: "muted" }, `Live updates interrupted (${error.message}); retrying…`));
      await sleep(RETRY_MS);
    }
    describe();
    draw();
  }
}

/** The summary fields the page shows, from the points so far (the stored one arrives when the run ends). */
function liveSummary(pts) {
  const out = { epochs_completed: pts.length ? pts[pts.length - 1].epoch : 0, seconds: 0 };
  for (const p of pts) {
    out.seconds += p.seconds;
    if (p.val_accuracy != null && !(p.val_accuracy <= out.best_val_accuracy)) {
      out.best_val_accuracy = p.val_accuracy;
      out.best_epoch = p.epoch;
    }
    if (p.val_loss != null && !(p.val_loss >= out.min_val_loss)) out.min_val_loss = p.val_loss;
    out.final_val_accuracy = p.val_accuracy;
  }
  return out;
}
