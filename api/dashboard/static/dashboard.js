// Entry point: every page is the same HTML shell; this picks the view from location.pathname.

import { advicePage } from "./advice.js";
import { forgetKey, showKeyState } from "./api.js";
import { comparePage, experimentPage } from "./compare.js";
import { datasetPage } from "./datasets.js";
import { errorBox, h } from "./dom.js";
import { homePage } from "./home.js";
import { lrFinderPage } from "./lrfinder.js";
import { pbtPage } from "./pbt.js";
import { runPage } from "./run.js";
import { searchPage } from "./search.js";

const ROUTES = [
  [/^\/$/, (app) => homePage(app)],
  [/^\/runs\/([^/]+)$/, (app, id) => runPage(app, id)],
  [/^\/experiments\/([^/]+)$/, (app, id) => experimentPage(app, id)],
  [/^\/compare$/, (app) => comparePage(app, (new URLSearchParams(location.search).get("runs") || "").split(",").filter(Boolean))],
  [/^\/lr-finder\/([^/]+)$/, (app, id) => lrFinderPage(app, id)],
  [/^\/pbt\/([^/]+)$/, (app, id) => pbtPage(app, id)],
  [/^\/searches\/([^/]+)$/, (app, id) => searchPage(app, id)],
  [/^\/advice\/([^/]+)$/, (app, id) => advicePage(app, id)],
  [/^\/datasets\/([^/]+)$/, (app, id) => datasetPage(app, id)],
];

async function main() {
  showKeyState();
  document.getElementById("forget-key").addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
  const app = document.getElementById("app");
  app.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  for (const [pattern, view] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    try {
      await view(app, ...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      app.replaceChildren(errorBox(error), h("p", {}, h("a", { href: "/" }, "Back to runs & experiments")));
    }
    return;
  }
  app.replaceChildren(h("p", {}, "No such page. ", h("a", { href: "/" }, "Back to runs & experiments")));
}

main();
