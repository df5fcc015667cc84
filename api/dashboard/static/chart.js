// A small SVG line chart: axes with ticks, a legend whose entries toggle their series, a hover tooltip
// (series, x and y of the nearest point) and linear or log scales. No dependencies.
//
//   const chart = new LineChart({ name: "loss", title: "Loss", yLabel: "loss", logToggle: true });
//   parent.append(chart.element);
//   chart.setData([{ id, label, color, dash, points: [{ x, y }] }], [{ x, label }]);
//
// Options: name, title, xLabel, yLabel, xLog, logToggle (a log-y checkbox), xDomain, yClamp ([lo, hi] the
// y domain never leaves), yMax (values above run off the top), integerX (ticks on whole epochs), empty.
//
// Rendered paths carry data-role="series", data-series=<id> and data-points=<points drawn>, so tests and
// people inspecting the page can count them; hidden series are not drawn at all.

const NS = "http://www.w3.org/2000/svg";
const W = 720;
const H = 300;
const M = { top: 14, right: 18, bottom: 40, left: 64 };
const DOTS_UP_TO = 40; // points per series at or below which each point also gets a dot

// Colour-blind-friendly qualitative palette (Okabe–Ito, then darker variants).
export const PALETTE = [
  "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#7f6a00", "#6a3d9a", "#b2182b", "#4d4d4d",
];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Up to 4 significant digits; exponent form for the very small and very large (lrs, exploded losses). */
export function formatNumber(v, digits = 4) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) {
    const [m, e] = v.toExponential(digits - 1).split("e");
    return `${Number(m)}e${Number(e)}`;
  }
  return String(Number(v.toPrecision(digits)));
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

/** [min, max] of an array of any length (Math.min(...values) overflows the call stack past ~100k values). */
export function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function makeScale(domain, range, log) {
  const t = log ? Math.log10 : (v) => v;
  const [d0, d1] = domain.map(t);
  const span = d1 - d0 || 1;
  const f = (v) => range[0] + ((t(v) - d0) / span) * (range[1] - range[0]);
  f.domain = domain;
  return f;
}

function niceStep(span, count) {
  const raw = span / count || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999);
}

function linearTicks([lo, hi], count = 6) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function niceLinearDomain(lo, hi, count = 6) {
  if (lo === hi) [lo, hi] = [lo - (Math.abs(lo) * 0.1 || 1), hi + (Math.abs(hi) * 0.1 || 1)];
  const step = niceStep(hi - lo, count);
  return [Math.floor(lo / step + 1e-9) * step, Math.ceil(hi / step - 1e-9) * step];
}

function logDomain(lo, hi) {
  let a = Math.floor(Math.log10(lo) + 1e-9);
  let b = Math.ceil(Math.log10(hi) - 1e-9);
  if (a === b) [a, b] = [a - 1, b + 1];
  return [10 ** a, 10 ** b];
}

function logTicks([lo, hi]) {
  const a = Math.round(Math.log10(lo));
  const b = Math.round(Math.log10(hi));
  const every = Math.ceil((b - a) / 8); // at most ~8 decade labels
  const mults = b - a <= 2 ? [1, 2, 5] : [1];
  const out = [];
  for (let e = a; e <= b; e += every) for (const m of mults) if (m * 10 ** e <= hi * 1.0001) out.push(m * 10 ** e);
  return out;
}

export class LineChart {
  constructor(opts) {
    this.opts = { xLabel: "epoch", yLabel: "", xLog: false, logToggle: false, integerX: true, ...opts };
    this.series = [];
    this.markers = [];
    this.hidden = new Set();
    this.yLog = false;
    this.build();
  }

  get element() {
    return this.root;
  }

  build() {
    const { name, title, logToggle } = this.opts;
    this.root = document.createElement("figure");
    this.root.className = "chart";
    this.root.dataset.chart = name;
    this.root.dataset.scale = "linear";
    const caption = document.createElement("figcaption");
    const heading = document.createElement("span");
    heading.className = "chart-title";
    heading.textContent = title;
    caption.append(heading);
    if (logToggle) {
      const label = document.createElement("label");
      label.className = "toggle";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.role = "log-toggle";
      box.addEventListener("change", () => this.setLogY(box.checked));
      label.append(box, " log scale");
      caption.append(label);
    }
    const plot = document.createElement("div");
    plot.className = "plot";
    this.svg = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    this.tooltip = document.createElement("div");
    this.tooltip.className = "tooltip";
    this.tooltip.dataset.role = "tooltip";
    this.tooltip.hidden = true;
    plot.append(this.svg, this.tooltip);
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    this.root.append(caption, plot, this.legend);
  }

  setData(series, markers = []) {
    this.series = series;
    this.markers = markers;
    this.render();
  }

  setLogY(on) {
    this.yLog = on;
    this.root.dataset.scale = on ? "log" : "linear";
    this.render();
  }

  toggle(id) {
    if (this.hidden.has(id)) this.hidden.delete(id);
    else this.hidden.add(id);
    this.render();
  }

  usable(p, axisLog) {
    return finite(p) && (!axisLog || p > 0);
  }

  domains() {
    const { xLog, xDomain, yClamp, yMax, integerX } = this.opts;
    const xs = this.series.flatMap((s) => s.points.map((p) => p.x)).filter((x) => this.usable(x, xLog));
    const visible = this.series.filter((s) => !this.hidden.has(s.id));
    const ys = visible
      .flatMap((s) => s.points.map((p) => p.y))
      .filter((y) => this.usable(y, this.yLog))
      .map((y) => (yMax ? Math.min(y, yMax) : y)); // above yMax runs off the top (clipped), not squashing the rest
    let x;
    const [x0, x1] = extent(xs);
    if (xDomain) x = xDomain;
    else if (!xs.length) x = xLog ? [1e-4, 1] : [1, 2];
    else if (xLog) x = logDomain(x0, x1);
    else x = [x0, Math.max(x1, x0 + (integerX ? 1 : 1e-9))];
    let y;
    const [y0, y1] = extent(ys);
    if (!ys.length) y = this.yLog ? [0.1, 10] : [0, 1];
    else if (this.yLog) y = logDomain(y0, y1);
    else {
      y = niceLinearDomain(y0, y1);
      if (yClamp) y = [Math.max(y[0], yClamp[0]), Math.min(y[1], yClamp[1])];
    }
    return { x, y };
  }

  render() {
    const { xLog, xLabel, yLabel, integerX } = this.opts;
    const { x, y } = this.domains();
    const xs = makeScale(x, [M.left, W - M.right], xLog);
    const ys = makeScale(y, [H - M.bottom, M.top], this.yLog);
    Object.assign(this, { xs, ys });
    this.svg.replaceChildren();
    this.hideTooltip();

    const axes = svg("g", { class: "axes" });
    const yTicks = this.yLog ? logTicks(y) : linearTicks(y, 5);
    for (const t of yTicks) {
      axes.append(svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: ys(t), y2: ys(t) }));
      axes.append(svg("text", { class: "tick y", x: M.left - 8, y: ys(t), "data-role": "y-tick" }, formatNumber(t, 3)));
    }
    let xTicks = xLog ? logTicks(x) : linearTicks(x, 8);
    if (integerX && !xLog) xTicks = xTicks.filter(Number.isInteger);
    for (const t of xTicks) {
      axes.append(svg("line", { class: "tick-mark", x1: xs(t), x2: xs(t), y1: H - M.bottom, y2: H - M.bottom + 5 }));
      axes.append(svg("text", { class: "tick x", x: xs(t), y: H - M.bottom + 18 }, formatNumber(t, 3)));
    }
    axes.append(svg("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
    axes.append(svg("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }));
    axes.append(svg("text", { class: "axis-label", x: (M.left + W - M.right) / 2, y: H - 4 }, xLabel));
    const yl = svg("text", { class: "axis-label", x: 0, y: 0 }, yLabel + (this.yLog ? " (log)" : ""));
    yl.setAttribute("transform", `translate(14 ${(M.top + H - M.bottom) / 2}) rotate(-90)`);
    axes.append(yl);
    this.svg.append(axes);

    const clip = `clip-${this.opts.name}`;
    const defs = svg("defs");
    const clipPath = svg("clipPath", { id: clip });
    clipPath.append(svg("rect", { x: M.left, y: M.top - 4, width: W - M.left - M.right, height: H - M.top - M.bottom + 8 }));
    defs.append(clipPath);
    const lines = svg("g", { class: "lines", "clip-path": `url(#${clip})` });
    this.svg.append(defs, lines);

    for (const s of this.series) {
      if (this.hidden.has(s.id)) continue;
      const drawn = s.points.filter((p) => this.usable(p.x, xLog) && this.usable(p.y, this.yLog));
      // A missing value (NaN loss, or <= 0 on a log axis) breaks the line rather than bridging it.
      let d = "";
      let pen = "M";
      for (const p of s.points) {
        if (!this.usable(p.x, xLog) || !this.usable(p.y, this.yLog)) {
          pen = "M";
          continue;
        }
        d += `${pen}${xs(p.x).toFixed(1)},${ys(p.y).toFixed(1)}`;
        pen = "L";
      }
      const path = svg("path", { d, class: "line", stroke: s.color, "data-role": "series" });
      path.dataset.series = s.id;
      path.dataset.points = String(drawn.length);
      if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
      lines.append(path);
      if (drawn.length <= DOTS_UP_TO) {
        for (const p of drawn) lines.append(svg("circle", { class: "dot", cx: xs(p.x), cy: ys(p.y), r: 2.5, fill: s.color }));
      }
    }

    for (const m of this.markers) {
      if (!this.usable(m.x, xLog)) continue;
      const g = svg("g", { class: "marker", "data-role": "marker" });
      g.dataset.value = String(m.x);
      g.append(svg("line", { x1: xs(m.x), x2: xs(m.x), y1: M.top, y2: H - M.bottom }));
      const anchor = xs(m.x) > W - 160 ? "end" : "start";
      g.append(svg("text", { x: xs(m.x) + (anchor === "end" ? -6 : 6), y: M.top + 12, "text-anchor": anchor }, m.label));
      this.svg.append(g);
    }

    if (!this.series.some((s) => s.points.length)) {
      this.svg.append(svg("text", { class: "empty", x: W / 2, y: H / 2 }, this.opts.empty || "no data yet"));
    }

    this.hover = svg("g", { class: "hover" });
    const overlay = svg("rect", {
      class: "overlay", x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom,
    });
    overlay.addEventListener("mousemove", (e) => {
      this.pointer = { clientX: e.clientX, clientY: e.clientY };
      this.showNearest(this.pointer);
    });
    overlay.addEventListener("mouseleave", () => {
      this.pointer = null;
      this.hideTooltip();
    });
    this.svg.append(this.hover, overlay);
    this.renderLegend();
    if (this.pointer) this.showNearest(this.pointer); // new data under a resting pointer: keep the tooltip
  }

  renderLegend() {
    this.legend.replaceChildren();
    for (const s of this.series) {
      const on = !this.hidden.has(s.id);
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.role = "legend";
      button.dataset.series = s.id;
      button.setAttribute("aria-pressed", String(on));
      button.title = on ? "Click to hide" : "Click to show";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.borderColor = s.color;
      if (s.dash) swatch.classList.add("dashed");
      button.append(swatch, s.label);
      button.addEventListener("click", () => this.toggle(s.id));
      const item = document.createElement("li");
      item.append(button);
      this.legend.append(item);
    }
  }

  /** The visible point nearest the pointer in x, ties (the same epoch on several series) broken by y. */
  showNearest(pointer) {
    const at = new DOMPoint(pointer.clientX, pointer.clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    let best = null;
    for (const s of this.series) {
      if (this.hidden.has(s.id)) continue;
      for (const p of s.points) {
        if (!this.usable(p.x, this.opts.xLog) || !this.usable(p.y, this.yLog)) continue;
        const px = this.xs(p.x);
        const py = this.ys(p.y);
        const dx = Math.round(Math.abs(px - at.x));
        const dy = Math.abs(py - at.y);
        if (!best || dx < best.dx || (dx === best.dx && dy < best.dy)) best = { s, p, px, py, dx, dy };
      }
    }
    if (!best) return this.hideTooltip();
    this.hover.replaceChildren(
      svg("line", { class: "guide", x1: best.px, x2: best.px, y1: M.top, y2: H - M.bottom }),
      svg("circle", { cx: best.px, cy: best.py, r: 4.5, fill: best.s.color, class: "focus" }),
    );
    const lines = [
      [best.s.label, "tip-label"],
      [`${this.opts.xLabel} ${formatNumber(best.p.x)}`, ""],
      [`${best.s.metric || this.opts.yLabel} ${formatNumber(best.p.y)}`, "tip-value"],
    ];
    this.tooltip.replaceChildren(
      ...lines.map(([text, cls]) => {
        const div = document.createElement("div");
        div.textContent = text;
        if (cls) div.className = cls;
        return div;
      }),
    );
    this.tooltip.hidden = false;
    const scale = this.svg.getBoundingClientRect().width / W;
    const left = best.px * scale;
    const flip = left > this.svg.getBoundingClientRect().width - 200;
    this.tooltip.style.left = flip ? "" : `${left + 12}px`;
    this.tooltip.style.right = flip ? `${this.svg.getBoundingClientRect().width - left + 12}px` : "";
    this.tooltip.style.top = `${Math.max(0, best.py * scale - 30)}px`;
  }

  hideTooltip() {
    if (this.tooltip) this.tooltip.hidden = true;
    if (this.hover) this.hover.replaceChildren();
  }
}
