// DOM and formatting helpers shared by the pages. Text always goes in as text nodes, never as HTML:
// labels and experiment names come from users.

import { api } from "./api.js";
import { formatNumber } from "./chart.js";

/** h("a", { href, class: "x", dataset: { role: "y" }, onclick }, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled", "diverged", "stopped", "finished"]);
export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "diverged", "stopped"];
export const METRICS = [
  "best_val_accuracy", "final_val_accuracy", "min_val_loss", "final_val_loss", "epochs_to_target", "seconds",
];

export const shortId = (id) => id.slice(0, 8);
export const fmt = formatNumber;
export const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { role: "status" } }, status);
}

/** "adam lr=0.001 · digits · mlp" for a run spec, as children for h() (an upload's name is a link). */
export function describeSpec(spec) {
  return [`${spec.optimizer.name} lr=${fmt(spec.optimizer.lr)} · `, datasetRef(spec.dataset), ` · ${spec.model.name}`];
}

const uploadNames = new Map(); // upload id -> Promise of its name (null once deleted), one call per id and page

function uploadName(id) {
  if (!uploadNames.has(id)) {
    uploadNames.set(id, api(`/v1/datasets/${encodeURIComponent(id)}`).then(
      (dataset) => dataset.name,
      (error) => (error.status === 404 ? null : undefined),
    ));
  }
  return uploadNames.get(id);
}

/**
 * A spec's dataset: a built-in by name, a file as file:<path>, an upload by its name (fetched; its short id
 * until then) linked to the dataset's page.
 */
export function datasetRef(ref) {
  if (ref.name) return ref.params && Object.keys(ref.params).length ? `${ref.name} ${params(ref.params, [])}` : ref.name;
  if (ref.path) return `file:${ref.path}`;
  if (!ref.id) return "–";
  const link = h("a", { href: `/datasets/${encodeURIComponent(ref.id)}`, dataset: { role: "dataset", datasetId: ref.id } },
    `upload ${shortId(ref.id)}`);
  uploadName(ref.id).then((name) => {
    if (name) link.textContent = name;
    else if (name === null) link.textContent = `upload ${shortId(ref.id)} (deleted)`;
  });
  return link;
}

/** A definition list of key → value pairs, skipping empty values. */
export function facts(pairs) {
  const dl = h("dl", { class: "facts" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "" || v === false) continue;
    dl.append(h("dt", {}, k), h("dd", {}, v));
  }
  return dl;
}

/** Every hyperparameter of an object as "k=v" (nested objects flattened), for specs. */
export function params(obj, skip = ["name", "kind"]) {
  return Object.entries(obj)
    .filter(([k]) => !skip.includes(k))
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.map((x) => fmt(x)).join("/") : typeof v === "number" ? fmt(v) : v}`)
    .join(" ");
}

export function errorBox(error) {
  const box = h("div", { class: "error", role: "alert" });
  if (error && error.detail && error.detail.length) {
    box.append(h("strong", {}, `Error ${error.status}`));
    box.append(h("ul", {}, error.detail.map((d) => h("li", {}, h("code", {}, (d.loc || []).join(".")), " ", d.msg))));
  } else {
    box.append(String(error && error.message ? error.message : error));
  }
  return box;
}

export function setTitle(text) {
  document.title = `${text} · lrlab`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
