// mesh's web UI: one page that routes on its URL and reads the node's API with the session
// cookie (mesh/api/ui.py, mesh/api/sessions.py). Plain JavaScript, no library, no build step.
//
// Pages and their stable URLs:
//   /                         overview: projects with their latest builds, recent jobs (open: counts only)
//   /ui/mesh                  this node and its peers: state, load, capabilities, store, cache
//   /ui/files[?dir=H:D&from=N]  the mesh's watched files (`mesh watch`), one directory's, a page at a time
//   /ui/projects/NAME         a project's builds
//   /ui/builds/NAME/N[/tasks/T]   a build: commit, trigger, its tasks, a task's log
//   /ui/jobs/ID[/tasks/T]     a job: its tasks by dependency, a task's log streamed live
"use strict";

const SESSION = (() => {
  const meta = document.querySelector('meta[name="mesh-session"]');
  return meta ? JSON.parse(meta.content) : null;
})();
const main = document.getElementById("main");
//: Lines of a log shown until the whole is asked for; the rest stay in memory.
const TAIL = 1000;
//: Milliseconds between two reads of a page's data (lists, the mesh) while it is open.
const POLL = 2000;
//: Files in one page of the files table: /files is read a page at a time, whatever the mesh holds.
const FILES_PAGE = 100;
let page = null; // {abort: AbortController} of the page shown

// -- small helpers --------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const link = (href, ...text) => el("a", {href}, ...text);
const stateEl = (state) => el("span", {class: `state ${state}`}, state || "?");
const enc = encodeURIComponent;

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}
function duration(start, end) {
  if (!start) return "";
  let s = Math.max(0, (end || Date.now() / 1000) - start);
  if (s < 10) return `${s.toFixed(1)} s`;
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} bytes`;
}
function seconds(s) {
  return duration(Date.now() / 1000 - s, Date.now() / 1000);
}
const blobSize = (digest) => (digest ? Number(digest.split(":")[2]) : 0);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function answer(response) {
  let body = {};
  try { body = await response.json(); } catch (_) { /* an empty or non-JSON answer */ }
  if (!response.ok) throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
  return body;
}
function get(path, signal) {
  return fetch(path, {signal, headers: {accept: "application/json"}, credentials: SESSION ? "same-origin" : "omit"})
    .then(answer);
}
// A state-changing request: the session's CSRF token rides in a header (mesh.api.sessions).
function post(path, body) {
  return fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: {accept: "application/json", "content-type": "application/json", "x-mesh-csrf": SESSION ? SESSION.csrf : ""},
    body: body === undefined ? "" : JSON.stringify(body),
  }).then(answer);
}
function problem(error) {
  if (error.name === "AbortError") return null;
  if (error.status === 401) {
    return el("p", {class: "error", role: "alert"}, "Not logged in, or the session has ended: run ",
      el("code", {}, "mesh ui"), " for a new login link. (", error.message, ")");
  }
  return el("p", {class: "error", role: "alert"}, String(error.message || error));
}
function ask(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), {once: true});
    dialog.showModal();
    document.getElementById("confirm-yes").focus();
  });
}
// Run fn now and every `ms` after it ends, until the page is left.
function every(ms, signal, fn) {
  let timer = null;
  const tick = async () => {
    try { await fn(); } catch (error) { if (error.name !== "AbortError") console.error(error); }
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  tick();
}
function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}
function table(headings, rows, empty) {
  if (!rows.length) return el("p", {class: "muted"}, empty || "none");
  return el("table", {}, el("thead", {}, el("tr", {}, headings.map((h) => el("th", {scope: "col"}, h)))),
    el("tbody", {}, rows));
}
// Put `node` in `holder` in place of what it held, unless that looks the same; the focus and
// the keyboard's row cursor stay on the same link (or button of the same row) across the swap.
function swap(holder, node) {
  const old = holder.firstElementChild;
  if (old && old.outerHTML === node.outerHTML) return;
  const focused = holder.contains(document.activeElement) ? document.activeElement : null;
  const cursor = holder.querySelector("tr.cursor a");
  const where = (e) => e && (e.getAttribute("href") || `${e.closest("tr")?.querySelector("a")?.getAttribute("href")}#${e.textContent}`);
  const [focusAt, cursorAt] = [where(focused), where(cursor)];
  holder.replaceChildren(node);
  for (const e of node.querySelectorAll("a, button")) {
    const at = where(e);
    if (cursorAt && at === cursorAt) e.closest("tr")?.classList.add("cursor");
    if (focusAt && at === focusAt) e.focus({preventScroll: true});
  }
}

// -- the router -----------------------------------------------------------------------

const ROUTES = [
  [/^\/$/, overview],
  [/^\/ui\/mesh\/?$/, meshPage],
  [/^\/ui\/files\/?$/, filesPage],
  [/^\/ui\/projects\/([^/]+)\/?$/, projectPage],
  [/^\/ui\/builds\/([^/]+)\/(\d+)(?:\/tasks\/([^/]+))?\/?$/, buildPage],
  [/^\/ui\/jobs\/([0-9A-Za-z_-]+)(?:\/tasks\/([^/]+))?\/?$/, jobPage],
];

function show() {
  if (page) page.abort.abort();
  page = {abort: new AbortController()};
  const path = location.pathname;
  const at = path === "/" ? "overview" : (/^\/ui\/(mesh|files)\b/.exec(path) || [])[1];
  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    if (a.dataset.nav === at) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [pattern, render] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      main.replaceChildren();
      const params = match.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p)));
      render(page.abort.signal, ...params).catch((error) => {
        const shown = problem(error);
        if (shown) main.append(shown);
      });
      return;
    }
  }
  main.replaceChildren(el("h1", {}, "No such page"), el("p", {}, link("/", "The overview")));
}
function go(url) {
  history.pushState(null, "", url);
  show();
  main.focus({preventScroll: true});
  window.scrollTo(0, 0);
}
document.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === "/" || url.pathname.startsWith("/ui/"))) return;
  if (url.pathname.startsWith("/ui/login") || url.pathname.startsWith("/ui/assets/")) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", show);

// Keys: g o / g m / g f go to a page; j and k move a cursor over the rows of the page's tables,
// Enter opens the cursor row's first link.
let pendingG = false;
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, textarea, select, dialog")) return;
  if (pendingG) {
    pendingG = false;
    if (event.key === "o") go("/");
    else if (event.key === "m") go("/ui/mesh");
    else if (event.key === "f") go("/ui/files");
    return;
  }
  if (event.key === "g") { pendingG = true; return; }
  if (event.key !== "j" && event.key !== "k") return;
  const rows = [...main.querySelectorAll("tbody tr")].filter((row) => row.querySelector("a"));
  if (!rows.length) return;
  const at = rows.findIndex((row) => row.classList.contains("cursor"));
  const next = Math.min(rows.length - 1, Math.max(0, at + (event.key === "j" ? 1 : -1)));
  rows.forEach((row) => row.classList.remove("cursor"));
  rows[next].classList.add("cursor");
  rows[next].querySelector("a").focus();
});

// -- the overview -------------------------------------------------------------------------

async function overview(signal) {
  if (!SESSION) return openOverview(signal);
  const facts = el("div", {class: "facts"});
  const projects = el("div", {}, el("p", {class: "muted"}, "Loading…"));
  const jobs = el("div", {}, el("p", {class: "muted"}, "Loading…"));
  main.append(el("h1", {}, "Overview"), facts,
    el("div", {class: "grid"}, section("Projects", projects), section("Recent jobs", jobs)));
  every(POLL, signal, async () => {
    const [status, listed, recent] = await Promise.all([
      get("/status", signal), get("/v1/projects", signal), get("/v1/jobs?limit=30", signal)]);
    facts.replaceChildren(...nodeFacts(status));
    const builds = await Promise.all(listed.projects.map((p) =>
      get(`/v1/projects/${enc(p.name)}/builds?limit=5`, signal).then((b) => b.builds)));
    const buildOf = new Map();
    builds.flat().forEach((b) => buildOf.set(b.job, b));
    swap(projects, table(["project", "latest", "state", "badge", "duration", "earlier"],
      listed.projects.map((p, i) => projectRow(p, builds[i])), "No projects yet: `mesh project add NAME GIT_URL`."));
    swap(jobs, table(["job", "state", "what", "started", "duration"], recent.jobs.map((j) => {
      const build = buildOf.get(j.id);
      return el("tr", {},
        el("td", {}, link(`/ui/jobs/${enc(j.id)}`, el("code", {}, j.id.slice(0, 12)))),
        el("td", {}, stateEl(j.state)),
        el("td", {}, build ? link(`/ui/builds/${enc(build.project)}/${build.number}`, `build ${build.project} #${build.number}`)
          : el("code", {}, j.label)),
        el("td", {}, when(j.created_at)),
        el("td", {}, duration(j.created_at, j.finished_at)));
    }), "No jobs yet: `mesh exec -- CMD`."));
  });
}

function projectRow(project, builds) {
  const latest = builds[0];
  const name = project.name;
  return el("tr", {},
    el("td", {}, link(`/ui/projects/${enc(name)}`, name)),
    el("td", {}, latest ? link(`/ui/builds/${enc(name)}/${latest.number}`, `#${latest.number}`) : el("span", {class: "muted"}, "no builds")),
    el("td", {}, latest ? stateEl(latest.state) : ""),
    el("td", {}, el("img", {class: "badge", src: `/v1/projects/${enc(name)}/badge.svg`, alt: `${name}: ${latest ? latest.state : "no builds"}`, height: 20})),
    el("td", {}, latest ? duration(latest.created_at, latest.finished_at) : ""),
    el("td", {}, builds.slice(1).map((b) => [el("a", {href: `/ui/builds/${enc(name)}/${b.number}`, class: b.state, title: b.state}, `#${b.number}`), " "])));
}

function nodeFacts(s) {
  const fact = (name, value) => el("span", {}, `${name} `, el("b", {}, value));
  return [fact("node", s.node), fact("mesh", s.mesh), fact("version", s.version), fact("up", seconds(s.uptime)),
    fact("slots busy", `${s.slots.busy}/${s.slots.total}`), fact("queued", s.queue), fact("jobs running", s.running_jobs),
    fact("peers", s.peers.length)];
}

// The open overview: what /status shows anyone, counts only (no command lines, no logs).
async function openOverview(signal) {
  const facts = el("div", {class: "facts"});
  const counts = el("div");
  const peers = el("div");
  main.append(el("h1", {}, "mesh node"), facts,
    el("p", {}, "This page is open and shows counts only. To see projects, builds, jobs and their logs, run ",
      el("code", {}, "mesh ui"), " on a machine that holds the mesh key and open the login link it prints."),
    el("div", {class: "grid"}, section("Jobs", counts), section("Peers", peers)));
  every(POLL, signal, async () => {
    const s = await get("/status", signal);
    facts.replaceChildren(...nodeFacts(s));
    swap(counts, table(["state", "jobs"], Object.entries(s.jobs.counts).sort().map(([state, n]) =>
      el("tr", {}, el("td", {}, stateEl(state)), el("td", {}, n))), "No jobs yet."));
    swap(peers, peerTable(s.peers));
  });
}

// -- the mesh -----------------------------------------------------------------------------

function capabilities(caps) {
  const executors = Object.keys(caps).filter((k) => k.startsWith("executor.")).map((k) => k.slice(9));
  const labels = Object.entries(caps).filter(([k]) => k.startsWith("label.")).map(([k, v]) => `${k.slice(6)}=${v}`);
  const parts = [caps.os && `${caps.os}/${caps.arch}`, caps.cores && `${caps.cores} cores`,
    caps.memory && bytes(Number(caps.memory)), executors.length && `executors ${executors.join(", ")}`,
    labels.length && `labels ${labels.join(" ")}`];
  return parts.filter(Boolean).join(" · ");
}
function peerTable(peers) {
  return table(["node", "state", "url", "slots busy", "queued", "last heard", "watched", "capabilities"], peers.map((p) =>
    el("tr", {}, el("td", {}, el("code", {}, p.node)), el("td", {}, stateEl(p.state)), el("td", {}, p.url),
      el("td", {}, `${p.load.busy ?? 0}/${p.load.slots ?? 0}`), el("td", {}, p.load.queued ?? 0),
      el("td", {}, `${Number(p.last_heard).toFixed(1)} s ago`), el("td", {}, p.watches ?? 0),
      el("td", {}, capabilities(p.capabilities || {})))),
  "No peers: this node works alone. Start others with `mesh up --peer HOST:PORT` (or mDNS on a LAN).");
}

async function meshPage(signal) {
  const self = el("div");
  const peers = el("div");
  main.append(el("h1", {}, "Mesh"), section("This node", self), section("Peers", peers));
  every(POLL, signal, async () => {
    const s = await get("/status", signal);
    const hits = s.cache.hits;
    const looked = hits + s.tasks_run;
    const rate = looked ? `${((100 * hits) / looked).toFixed(1)} % (${hits} of ${looked} tasks)` : "no tasks yet";
    const store = s.store;
    const row = (name, value) => el("tr", {}, el("th", {scope: "row"}, name), el("td", {}, value));
    swap(self, el("table", {class: "kv"}, el("tbody", {},
      row("node", el("code", {}, s.node)), row("url", s.url), row("version", s.version), row("up", seconds(s.uptime)),
      row("slots busy", `${s.slots.busy}/${s.slots.total}`), row("queued", s.queue),
      row("executors", `${s.executors.offered.join(", ")} (default ${s.executors.default})`),
      row("capabilities", capabilities(s.capabilities || {})),
      row("store use", `${bytes(store.bytes)} in ${store.blobs ?? "?"} blob${store.blobs === 1 ? "" : "s"}` + (store.cap ? ` of a cap of ${bytes(store.cap)}` : " (no cap)")
        + (store.evicted_blobs ? `; evicted ${store.evicted_blobs} blobs, ${bytes(store.evicted_bytes)}` : "")),
      row("cache hit rate", rate),
      row("action cache", `${s.cache.entries} entries here; asked peers ${s.cache.mesh.asked} times, found ${s.cache.mesh.found}`),
      row("work stealing", `stolen ${s.stealing.stolen}, given ${s.stealing.given}`),
      row("watched", link("/ui/files", `${s.watches ?? 0} director${s.watches === 1 ? "y" : "ies"} through this node`)))));
    swap(peers, peerTable(s.peers));
  });
}

// -- the watched files ------------------------------------------------------------------

// The files of the mesh's watchers (`mesh watch`, GET /files): the watched directories with
// their nodes and counts, each a link that keeps only its files; the files a page of
// FILES_PAGE at a time (?from=N), so only that page is read and drawn however many there are.
// Both are read again every POLL: files come and go without a reload.
async function filesPage(signal) {
  const query = new URLSearchParams(location.search);
  const dir = query.get("dir");
  const from = Math.max(0, Math.floor(Number(query.get("from")) || 0));
  const address = (f) => `${f.host}:${f.directory}`;
  const here = (at, start) => {
    const q = new URLSearchParams();
    if (at) q.set("dir", at);
    if (start) q.set("from", start);
    return `/ui/files${q.toString() ? `?${q}` : ""}`;
  };
  const facts = el("div", {class: "facts"});
  const dirs = el("div");
  const heading = el("h2", {}, dir ? ["Files of ", el("code", {}, dir)] : "Files");
  const pager = el("div", {class: "pager"});
  const list = el("div");
  main.append(el("h1", {}, "Watched files"), facts, section("Watched directories", dirs),
    el("section", {}, heading, pager, list));
  every(POLL, signal, async () => {
    const q = new URLSearchParams({from, limit: FILES_PAGE});
    if (dir) q.set("dir", dir);
    const answer = await get(`/files?${q}`, signal);
    const nodes = new Set(answer.directories.map((d) => d.node));
    const all = answer.directories.reduce((n, d) => n + d.files, 0);
    facts.replaceChildren(el("span", {}, el("b", {}, all.toLocaleString()), ` file${all === 1 ? "" : "s"} in `,
      el("b", {}, answer.directories.length), ` watched director${answer.directories.length === 1 ? "y" : "ies"} on `,
      el("b", {}, nodes.size), ` node${nodes.size === 1 ? "" : "s"}`));
    swap(dirs, table(["directory", "node", "files"], answer.directories.map((d) =>
      el("tr", {class: address(d) === dir ? "selected" : null},
        el("td", {}, link(here(address(d)), el("code", {}, address(d)))),
        el("td", {}, el("code", {}, d.node)), el("td", {}, d.files.toLocaleString()))),
    "No watched directories: run `mesh watch DIR` to list a directory's files here."));
    const shown = answer.files.length;
    swap(pager, el("p", {class: "actions"},
      el("span", {}, shown ? `files ${(from + 1).toLocaleString()}–${(from + shown).toLocaleString()} of ${answer.total.toLocaleString()}`
        : `no files here of ${answer.total.toLocaleString()}`),
      from > 0 ? link(here(dir, Math.max(0, from - FILES_PAGE)), "← previous page") : "",
      answer.next !== null ? link(here(dir, answer.next), "next page →") : "",
      dir ? link(here(null), "every directory") : ""));
    // One directory's files: its address is in the heading, not on every row.
    swap(list, table(["path", dir ? null : "directory", "node", "kind", "size"].filter(Boolean), answer.files.map((f) =>
      el("tr", {},
        el("td", {}, el("code", {}, f.path), f.target !== undefined ? el("span", {class: "muted"}, " → ", f.target) : ""),
        dir ? null : el("td", {}, el("code", {}, address(f))), el("td", {}, el("code", {}, f.node)),
        el("td", {}, f.kind), el("td", {}, f.kind === "link" ? "" : bytes(f.size)))),
    dir ? "No files in this directory (or it is no longer watched)." : "No files."));
  });
}

// -- projects and builds -----------------------------------------------------------------

async function projectPage(signal, name) {
  const list = el("div");
  main.append(el("h1", {}, "Project ", name, " ",
    el("img", {class: "badge", src: `/v1/projects/${enc(name)}/badge.svg`, alt: "", height: 20})), list);
  every(POLL, signal, async () => {
    const page = await get(`/v1/projects/${enc(name)}/builds?limit=100`, signal);
    swap(list, table(["build", "state", "commit", "trigger", "branch", "started", "duration"], page.builds.map((b) =>
      el("tr", {}, el("td", {}, link(`/ui/builds/${enc(name)}/${b.number}`, `#${b.number}`)), el("td", {}, stateEl(b.state)),
        el("td", {}, el("code", {}, (b.commit || "").slice(0, 12))),
        el("td", {}, b.trigger, b.rerun_of ? [" of ", link(`/ui/builds/${enc(name)}/${b.rerun_of}`, `#${b.rerun_of}`)] : ""), el("td", {}, b.branch || ""),
        el("td", {}, when(b.created_at)), el("td", {}, duration(b.created_at, b.finished_at)))), "No builds yet."));
  });
}

async function buildPage(signal, name, number, task) {
  const build = await get(`/v1/projects/${enc(name)}/builds/${number}`, signal);
  const head = el("div", {class: "facts"},
    el("span", {}, "commit ", el("code", {}, build.commit || "none")), el("span", {}, "trigger ", el("b", {}, build.trigger)),
    build.rerun_of ? el("span", {}, "re-run of ", link(`/ui/builds/${enc(name)}/${build.rerun_of}`, `#${build.rerun_of}`)) : "",
    build.branch ? el("span", {}, "branch ", el("b", {}, build.branch)) : "", el("span", {}, "job ", link(`/ui/jobs/${enc(build.job)}`, el("code", {}, build.job))));
  const rerun = el("button", {type: "button", onclick: async () => {
    if (!(await ask(`Run build #${number} of ${name} again, as a new build?`))) return;
    try {
      const again = await post(`/v1/projects/${enc(name)}/builds/${number}/rerun`);
      go(`/ui/builds/${enc(again.project)}/${again.number}`);
    } catch (error) { main.prepend(problem(error)); }
  }}, "Re-run build");
  await jobView(signal, build.job, task, `/ui/builds/${enc(name)}/${number}`, {
    title: () => [link(`/ui/projects/${enc(name)}`, name), ` #${number}`], facts: head, action: rerun});
}

// -- jobs, their tasks and logs ----------------------------------------------------------

async function jobPage(signal, id, task) {
  await jobView(signal, id, task, `/ui/jobs/${enc(id)}`);
}

// Tasks in an order that puts each after what it depends on (its `after` and input task),
// otherwise as submitted.
function byDependency(tasks) {
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const done = new Set();
  const ordered = [];
  const visit = (t, path) => {
    if (done.has(t.name) || path.has(t.name)) return;
    path.add(t.name);
    for (const dep of [...(t.after || []), t.input_task].filter(Boolean)) if (byName.has(dep)) visit(byName.get(dep), path);
    done.add(t.name);
    ordered.push(t);
  };
  tasks.forEach((t) => visit(t, new Set()));
  return ordered;
}

// A job's page, or a build's (`build`: its title, facts and action, shown above the job's).
async function jobView(signal, id, selected, base, build) {
  const name = build ? build.title : () => ["Job ", el("code", {}, id)];
  const title = el("h1", {}, ...name());
  const facts = el("div", {class: "facts"});
  const actions = el("div", {class: "actions"});
  const tasks = el("div");
  const logArea = el("div");
  main.append(title, build ? build.facts : "", facts, actions, section("Tasks", tasks), logArea);
  const again = build ? build.action : el("button", {type: "button", onclick: async () => {
    if (!(await ask(`Run job ${id} again, every task, as a new job?`))) return;
    try { go(`/ui/jobs/${enc((await post(`/v1/jobs/${enc(id)}/rerun`, {})).job)}`); } catch (error) { actions.append(problem(error)); }
  }}, "Re-run job");
  actions.append(again);
  let job = await get(`/v1/jobs/${enc(id)}`, signal);
  const startedOn = new Map();
  if (!selected && job.tasks.length === 1) selected = job.tasks[0].name;
  const log = selected ? new LogView(logArea, selected) : null;
  if (!selected) logArea.append(el("p", {class: "muted"}, "Pick a task to read its log."));

  const cancel = el("button", {type: "button", class: "danger", onclick: async () => {
    if (!(await ask(`Cancel job ${id}? Its running tasks are killed.`))) return;
    try { job = await post(`/v1/jobs/${enc(id)}/cancel`); draw(); } catch (error) { actions.append(problem(error)); }
  }}, "Cancel job");

  async function rerun(name) {
    if (!(await ask(`Run task ${name} again, with the inputs it had, and what depends on it?`))) return;
    try {
      const again = await post(`/v1/jobs/${enc(id)}/rerun`, {task: name});
      const at = again.build ? `/ui/builds/${enc(again.build.project)}/${again.build.number}` : `/ui/jobs/${enc(again.job)}`;
      go(`${at}/tasks/${enc(name)}`);
    } catch (error) { actions.append(problem(error)); }
  }

  function draw() {
    title.replaceChildren(...name(), " ", stateEl(job.state));
    facts.replaceChildren(
      el("span", {}, "what ", el("code", {}, job.label || "")),
      el("span", {}, "started ", when(job.created_at)),
      el("span", {}, "duration ", duration(job.created_at, job.finished_at)),
      job.reason ? el("span", {class: "error"}, job.reason) : "");
    cancel.hidden = job.state !== "running";
    again.hidden = !cancel.hidden; // a job is re-run once it has ended
    if (!actions.contains(cancel)) actions.prepend(cancel);
    const rows = byDependency(job.tasks).map((t) => {
      const r = t.result || {};
      const finished = !["running", "queued", "waiting"].includes(t.state) && t.finished_at;
      const deps = [...(t.after || []), t.input_task].filter(Boolean);
      return el("tr", {class: t.name === selected ? "selected" : null},
        el("td", {}, link(`${base}/tasks/${enc(t.name)}`, t.name), deps.length ? el("span", {class: "muted"}, ` ← ${deps.join(", ")}`) : ""),
        el("td", {}, stateEl(t.state)),
        el("td", {}, el("code", {}, r.node || startedOn.get(t.name) || "")),
        el("td", {}, r.cached ? "cached" : (t.result ? "ran" : "")),
        el("td", {}, when(t.started_at || r.started_at)),
        el("td", {}, duration(t.started_at || r.started_at, t.finished_at || r.finished_at)),
        el("td", {}, r.exit_code ?? (r.signal ? `signal ${r.signal}` : "")),
        el("td", {}, finished ? el("button", {type: "button", class: "small", onclick: () => rerun(t.name)}, "Re-run") : ""));
    });
    swap(tasks, table(["task", "state", "node", "cached", "started", "duration", "exit", ""], rows));
    if (log) log.status(job.tasks.find((t) => t.name === selected));
  }
  draw();

  // Live: the job's events (NDJSON), from its first; the task list is read again when a task
  // starts or ends, the selected task's output goes to its log.
  let refresh = null;
  const reread = () => {
    if (refresh) return;
    refresh = setTimeout(async () => {
      refresh = null;
      try { job = await get(`/v1/jobs/${enc(id)}`, signal); draw(); } catch (error) { if (error.name !== "AbortError") console.error(error); }
    }, 150);
  };
  const ticker = setInterval(() => job.state === "running" && draw(), 1000);
  signal.addEventListener("abort", () => { clearInterval(ticker); clearTimeout(refresh); });
  try {
    await followEvents(id, signal, (event) => {
      if (event.type === "output") {
        if (log && event.task === selected) log.output(event);
        return;
      }
      if (event.type === "task_started") startedOn.set(event.task, event.node);
      if (event.type === "task_finished" && log && event.task === selected) log.finish(event, signal).catch(shown);
      reread();
    });
  } finally {
    clearInterval(ticker);
  }
  if (signal.aborted) return;
  job = await get(`/v1/jobs/${enc(id)}`, signal);
  draw();
  if (log) await log.finish(job.tasks.find((t) => t.name === selected), signal);
}

function shown(error) {
  const what = problem(error);
  if (what) main.append(what);
}

async function followEvents(id, signal, onEvent) {
  const response = await fetch(`/v1/jobs/${enc(id)}/events`, {signal, headers: {accept: "application/json"}, credentials: "same-origin"});
  if (!response.ok) await answer(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    rest += decoder.decode(value, {stream: true});
    const lines = rest.split("\n");
    rest = lines.pop();
    for (const line of lines) if (line) onEvent(JSON.parse(line));
  }
}

// -- the log -----------------------------------------------------------------------------

// SGR state -> classes and inline style of a span (16 colours by class, 256 and RGB inline).
function sgr(state, params) {
  const codes = params === "" ? [0] : params.split(";").map(Number);
  const s = {...state};
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) { for (const k of Object.keys(s)) delete s[k]; }
    else if (c === 1) s.b = true; else if (c === 2) s.d = true; else if (c === 3) s.i = true; else if (c === 4) s.u = true;
    else if (c === 22) { delete s.b; delete s.d; } else if (c === 23) delete s.i; else if (c === 24) delete s.u;
    else if (c >= 30 && c <= 37) s.fg = c - 30; else if (c >= 90 && c <= 97) s.fg = c - 82; else if (c === 39) delete s.fg;
    else if (c >= 40 && c <= 47) s.bg = c - 40; else if (c >= 100 && c <= 107) s.bg = c - 100; else if (c === 49) delete s.bg;
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) { s[c === 38 ? "fg" : "bg"] = `x${codes[i + 2]}`; i += 2; }
    else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      s[c === 38 ? "fg" : "bg"] = `rgb(${codes[i + 2] | 0},${codes[i + 3] | 0},${codes[i + 4] | 0})`; i += 4;
    }
  }
  return s;
}
function xterm(n) {
  if (n < 16) return null;
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  const k = n - 16, steps = [0, 95, 135, 175, 215, 255];
  return `rgb(${steps[Math.floor(k / 36)]},${steps[Math.floor(k / 6) % 6]},${steps[k % 6]})`;
}
function spanOpen(s) {
  const classes = [], styles = [];
  for (const f of ["b", "d", "i", "u"]) if (s[f]) classes.push(f);
  for (const [key, cls, prop] of [["fg", "f", "color"], ["bg", "g", "background"]]) {
    const v = s[key];
    if (v === undefined) continue;
    if (typeof v === "number") classes.push(`${cls}${key === "bg" ? v % 8 : v}`);
    else if (v.startsWith("x")) {
      const n = Number(v.slice(1));
      if (n < 16) classes.push(`${cls}${key === "bg" ? n % 8 : n}`); else styles.push(`${prop}:${xterm(n)}`);
    } else styles.push(`${prop}:${v}`);
  }
  if (!classes.length && !styles.length) return "";
  return `<span${classes.length ? ` class="${classes.join(" ")}"` : ""}${styles.length ? ` style="${styles.join(";")}"` : ""}>`;
}
const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ESCAPES[c]);
// eslint-disable-next-line no-control-regex
const CSI = /\x1b\[([0-9;?]*)([@-~])|\x1b[^[]/g;
// One line as HTML, from the SGR state it starts in; also the state it ends in.
function lineHtml(text, state) {
  if (!text.includes("\x1b")) {
    const open = spanOpen(state);
    return [open + escapeHtml(text) + (open ? "</span>" : ""), state];
  }
  let html = "", at = 0, s = state, open = spanOpen(s);
  html += open;
  for (const m of text.matchAll(CSI)) {
    html += escapeHtml(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[2] !== "m") continue; // cursor moves and the like: dropped
    if (open) html += "</span>";
    s = sgr(s, m[1]);
    open = spanOpen(s);
    html += open;
  }
  html += escapeHtml(text.slice(at)) + (open ? "</span>" : "");
  return [html, s];
}
const endState = (text, state) => (text.includes("\x1b") ? lineHtml(text, state)[1] : state);

// A task's log: lines of stdout (0) and stderr (1) in the order they came, drawn as a virtual
// list (only the lines in view are elements), so 100,000 lines or more scroll without a stall.
class LogView {
  constructor(holder, task) {
    this.task = task;
    this.lines = []; // {s: stream, t: text, a: SGR state at its start}
    this.partial = ["", ""];
    this.state = [{}, {}];
    this.next = [0, 0]; // the byte offset the next chunk of each stream should start at
    this.gap = [false, false];
    this.whole = false;
    this.follow = true;
    this.pending = false;
    this.info = el("span", {class: "muted"});
    this.toggle = el("button", {type: "button", onclick: () => { this.whole = !this.whole; this.draw(); }}, "Show the whole log");
    this.box = el("div", {class: "log", tabindex: 0, role: "log", "aria-label": `log of task ${task}`});
    this.spacer = el("div");
    this.rows = el("div", {class: "rows"});
    this.box.append(this.spacer, this.rows);
    this.box.addEventListener("scroll", () => {
      this.follow = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 24;
      this.schedule();
    });
    this.taskState = el("span");
    holder.append(el("h2", {}, "Log of ", el("code", {}, task), " ", this.taskState),
      el("div", {class: "logbar"}, this.info, this.toggle, el("span", {class: "legend-err"}, "E: stderr")), this.box);
  }
  status(task) {
    if (task) this.taskState.replaceChildren(stateEl(task.state));
  }
  output(event) {
    const s = event.stream === "stderr" ? 1 : 0;
    if (event.dropped || event.offset > this.next[s]) this.gap[s] = true;
    if (event.dropped) return;
    this.next[s] = event.offset + new TextEncoder().encode(event.data).length;
    // A multi-byte character cut between two chunks arrives as U+FFFD (the node's JSON
    // replaces bytes that are not UTF-8 in each chunk): the blobs will say it right.
    if (event.data.includes("\ufffd")) this.lossy = true;
    this.add(s, event.data);
  }
  add(s, text) {
    const parts = (this.partial[s] + text).split("\n");
    this.partial[s] = parts.pop();
    for (let line of parts) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      const cr = line.lastIndexOf("\r");
      if (cr >= 0) line = line.slice(cr + 1);
      this.lines.push({s, t: line, a: this.state[s]});
      this.state[s] = endState(line, this.state[s]);
    }
    this.schedule();
  }
  flush() {
    for (const s of [0, 1]) if (this.partial[s]) { const rest = this.partial[s]; this.partial[s] = ""; this.add(s, rest + "\n"); }
  }
  // The task ended: what the events lacked (dropped chunks, a cached result, a log the node
  // no longer holds) is read from its stdout and stderr blobs, which hold every byte.
  async finish(task, signal) {
    const result = task && task.result;
    if (this.finished || !result) return;
    this.finished = true;
    this.flush();
    const sizes = [blobSize(result.stdout), blobSize(result.stderr)];
    const short = [0, 1].some((s) => sizes[s] > 0 && (this.gap[s] || this.next[s] < sizes[s]));
    if (!short && !this.lossy) return;
    this.info.textContent = "reading the whole output from the store…";
    const texts = await Promise.all([result.stdout, result.stderr].map((d, s) => (sizes[s]
      ? fetch(`/v1/blobs/${d}`, {signal, credentials: "same-origin"}).then((r) => (r.ok ? r.text() : answer(r)))
      : Promise.resolve(""))));
    this.lines = [];
    this.state = [{}, {}];
    this.partial = ["", ""];
    texts.forEach((text, s) => this.add(s, text));
    this.flush();
    this.note = "read from the store: stdout, then stderr";
    this.draw();
  }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }
  draw() {
    const lh = 18;
    const total = this.lines.length;
    const shown = this.whole ? total : Math.min(total, TAIL);
    const base = total - shown;
    this.spacer.style.height = `${shown * lh}px`;
    this.box.style.height = `${Math.max(120, Math.min(0.6 * window.innerHeight, shown * lh + 10))}px`;
    if (this.follow) this.box.scrollTop = this.box.scrollHeight;
    const first = Math.max(0, Math.floor(this.box.scrollTop / lh) - 30);
    const last = Math.min(shown, first + Math.ceil((this.box.clientHeight || 600) / lh) + 60);
    let html = "";
    for (let i = first; i < last; i++) {
      const line = this.lines[base + i];
      html += `<div class="ln${line.s ? " err" : ""}" data-n="${base + i + 1}">${lineHtml(line.t, line.a)[0]}</div>`;
    }
    this.rows.style.transform = `translateY(${first * lh}px)`;
    this.rows.innerHTML = html;
    this.info.textContent = `${total.toLocaleString()} lines` + (base ? ` · showing the last ${shown.toLocaleString()}` : "")
      + (this.note ? ` · ${this.note}` : "");
    this.toggle.hidden = total <= TAIL;
    this.toggle.textContent = this.whole ? `Show the last ${TAIL.toLocaleString()} lines` : "Show the whole log";
  }
}

// -- logging out ------------------------------------------------------------------------

if (!SESSION) for (const a of document.querySelectorAll('nav a[data-nav]:not([data-nav="overview"])')) a.hidden = true;
if (SESSION) {
  const out = document.getElementById("logout");
  out.hidden = false;
  document.getElementById("who").textContent = `logged in until ${new Date(SESSION.expires * 1000).toLocaleString()}`;
  out.addEventListener("click", async () => {
    try { await post("/ui/logout"); } finally { location.assign("/"); }
  });
}
show();
