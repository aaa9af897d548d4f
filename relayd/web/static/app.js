// relayd's status page: reads the JSON API every few seconds and redraws. No library, no build step.
// Everything from the catalogue is put in the page as text (textContent), never as HTML.
"use strict";

const API = "api/v1/"; // relative: the page also works behind a proxy under a sub-path
const REFRESH_MS = 2000;
const PLOT_REFRESH_MS = 10000;
const FILES_SHOWN = 1000;
const HOP_ORDER = ["download", "pan_upload", "vm_pull", "lfs_push", "local_copy"];
const COLOURS = ["#2b7bb9", "#e0701b", "#2e9d4e", "#8e5bc2", "#d04a5a", "#6b6b70", "#b59a00"];
const REASONS = {
  rapid_upload: "rapid upload (the drive had the content)",
  server_had_it: "the server already had the object",
  staged_already: "already staged for another file",
  drive_copy_reused: "a drive copy of the same content reused",
};

// What the API last sent (by path), and whether anything new came since the page was last drawn.
const seen = { etags: {}, docs: {}, fresh: true };
const view = { window: "hour", open: new Set(), allFiles: new Set(), throughput: null };

// -- helpers ---------------------------------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  let value = bytes;
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (Math.abs(value) < 1024 || unit === "TiB") return unit === "B" ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`;
    value /= 1024;
  }
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function rate(bytesPerSecond) {
  return bytesPerSecond ? `${size(bytesPerSecond)}/s` : "-";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
  let s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  let m = Math.floor(s / 60); s %= 60;
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  let h = Math.floor(m / 60); m %= 60;
  if (h < 48) return `${h}h${String(m).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
}

function ago(iso, now) {
  if (!iso) return "";
  const seconds = (now - Date.parse(iso)) / 1000;
  return seconds < 0 ? `in ${duration(-seconds)}` : `${duration(seconds)} ago`;
}

function clock(ms, seconds) {
  const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (seconds) options.second = "2-digit";
  return new Date(ms).toLocaleTimeString([], options);
}

function bar(fraction, done, small) {
  const fill = el("span");
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  const classes = ["bar", done ? "done" : "", small ? "small" : ""].filter(Boolean).join(" ");
  return el("span", { class: classes, role: "progressbar", "aria-valuenow": Math.round(fraction * 100) }, fill);
}

function hopColour(hop, hops) {
  const known = HOP_ORDER.indexOf(hop);
  const index = known >= 0 ? known : HOP_ORDER.length + hops.indexOf(hop);
  return COLOURS[index % COLOURS.length];
}

function byRoute(hops) {
  const rank = (hop) => (HOP_ORDER.includes(hop) ? HOP_ORDER.indexOf(hop) : HOP_ORDER.length);
  return [...hops].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

async function getJSON(path) {
  const headers = {};
  if (seen.etags[path]) headers["If-None-Match"] = seen.etags[path];
  const response = await fetch(API + path, { headers, cache: "no-store" });
  if (response.status === 304) return seen.docs[path];
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  seen.etags[path] = response.headers.get("ETag");
  seen.docs[path] = body;
  if (path.startsWith("status")) seen.fresh = true; // the plot and avoided bytes are drawn on their own
  return body;
}

// -- the summary: daemon, what needs attention, repos ----------------------------------------------

function itemWhere(item) {
  if (item.kind === "poll") return `${item.repo}  poll`;
  if (item.kind === "snapshot") return `${item.repo}  ${item.hop} (whole snapshot)`;
  return `${item.repo}  ${item.hop}  ${item.path}`;
}

function renderAttention(summary, now) {
  const blocked = document.getElementById("blocked");
  const stuck = document.getElementById("stuck");
  blocked.replaceChildren();
  stuck.replaceChildren();
  if (summary.blocked_total) {
    const more = summary.blocked.length < summary.blocked_total ? `, showing ${summary.blocked.length}` : "";
    blocked.append(el("li", { class: "bad" }, `Blocked: ${summary.blocked_total}${more}`));
  }
  for (const item of summary.blocked) {
    const since = item.since ? ` (since ${ago(item.since, now)})` : "";
    const cls = item.error_class ? ` [${item.error_class}]` : "";
    blocked.append(el("li", { class: "blocked-item" },
      el("span", { class: "where" }, itemWhere(item)), `: ${item.error || "no reason recorded"}${cls}${since}`,
      item.hint ? el("div", { class: "hint" }, item.hint) : null));
  }
  if (summary.stuck_total) {
    stuck.append(el("li", { class: "warn" }, `Stuck: ${summary.stuck_total} (failing for longer than retry.surface_after; still retrying)`));
  }
  for (const item of summary.stuck) {
    const next = item.next_attempt_at ? `, next try ${ago(item.next_attempt_at, now)}` : "";
    stuck.append(el("li", { class: "stuck-item" },
      el("span", { class: "where" }, itemWhere(item)), `: ${item.error || "no reason recorded"}`,
      el("div", { class: "dim" }, `${item.attempts} attempt(s), failing for ${duration(item.failing_seconds)}${next}`),
      el("div", { class: "check" }, item.hint)));
  }
  document.getElementById("attention").hidden = !summary.blocked_total && !summary.stuck_total;
}

function progress(repo) {
  if (repo.snapshot && repo.snapshot.state === "done") return [1, 0];
  let total = 0, done = 0, files = 0, filesDone = 0;
  for (const hop of repo.hops) {
    if (!hop.files_total) continue;
    total += hop.bytes_total;
    done += Math.min(hop.bytes_done, hop.bytes_total);
    files += hop.files_total;
    filesDone += hop.files_done;
  }
  if (total) return [done / total, total - done];
  return [files ? filesDone / files : 0, 0];
}

function flags(repo) {
  const out = [];
  if (repo.blocked) out.push(el("span", { class: "bad" }, `${repo.blocked} blocked`));
  const waiting = repo.hops.reduce((sum, hop) => sum + (hop.states.waiting || 0), 0);
  if (waiting) out.push(el("span", { class: "warn" }, `${waiting} waiting`));
  if (repo.finish && repo.finish.state !== "done") out.push(el("span", {}, `finish ${repo.finish.state}`));
  if (repo.poll.state === "waiting" || repo.poll.state === "blocked") {
    out.push(el("span", { class: repo.poll.state === "blocked" ? "bad" : "warn", title: repo.poll.error || "" }, `poll ${repo.poll.state}`));
  } else if (repo.poll.state === "new") {
    out.push(el("span", { class: "dim" }, "not polled yet"));
  }
  if (repo.paused) out.push(el("span", { class: "warn" }, "PAUSED"));
  return out;
}

function hopTable(repo) {
  const rows = repo.hops.map((hop) => {
    const left = hop.bytes_total - hop.bytes_done;
    const through = hop.files_total > 0 && hop.files_done === hop.files_total;
    const states = Object.entries(hop.states).filter(([, n]) => n).map(([state, n]) => `${n} ${state}`).join(", ");
    return el("tr", { "data-hop": hop.hop },
      el("td", {}, hop.hop),
      el("td", {}, bar(hop.bytes_total ? hop.bytes_done / hop.bytes_total : (through ? 1 : 0), through)),
      el("td", { class: "num" }, `${hop.files_done}/${hop.files_total} files`),
      el("td", { class: "num" }, `${size(hop.bytes_done)} / ${size(hop.bytes_total)}`),
      el("td", { class: "num" }, rate(hop.rate)),
      el("td", { class: "num" }, hop.rate && left > 0 ? `ETA ${duration(left / hop.rate)}` : ""),
      el("td", { class: "dim" }, [states, hop.not_reached ? `${hop.not_reached} not reached` : ""].filter(Boolean).join(", ")));
  });
  return el("table", { class: "grid hops" },
    el("thead", {}, el("tr", {}, ...["hop", "progress", "files", "bytes", "rate", "", "states"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function fileTable(detail, name) {
  const hops = detail.repo.route;
  const files = view.allFiles.has(name) ? detail.files : detail.files.slice(0, FILES_SHOWN);
  const body = el("tbody");
  for (const file of files) {
    const cells = file.hops.map((step) => {
      const state = step.state || "none";
      let text = step.state === null ? "-" : step.state;
      if (step.state === "done" && step.skipped) text = "done (already there)";
      if (step.state === "running" && step.rate) text += ` ${rate(step.rate)}${step.eta_seconds !== null ? ` ETA ${duration(step.eta_seconds)}` : ""}`;
      const fraction = step.bytes_total ? step.bytes_done / step.bytes_total : step.state === "done" ? 1 : 0;
      return el("td", { class: `state-${state}`, title: step.error || "" }, text, " ",
        step.state && step.state !== "done" ? bar(fraction, false, true) : null);
    });
    body.append(el("tr", { "data-path": file.path, "data-state": file.state },
      el("td", {}, file.path), el("td", { class: "num" }, size(file.size)), ...cells));
    for (const step of file.hops) {
      if (!step.error || step.state === "done") continue;
      const cls = step.error_class ? ` [${step.error_class}]` : "";
      body.append(el("tr", { class: "why" }, el("td", { colspan: hops.length + 2 },
        `${step.hop}: ${step.error}${cls} (attempt ${step.attempts})`,
        step.hint ? el("div", { class: "hint" }, step.hint) : null)));
    }
  }
  const table = el("table", { class: "grid files" },
    el("thead", {}, el("tr", {}, el("th", {}, `file (${detail.files.length})`), el("th", {}, "size"), ...hops.map((h) => el("th", {}, h)))),
    body);
  if (files.length === detail.files.length) return table;
  const more = el("button", { type: "button", class: "more" }, `show all ${detail.files.length} files`);
  more.addEventListener("click", () => { view.allFiles.add(name); seen.fresh = true; refresh(); });
  return el("div", {}, table, more);
}

function repoBlock(repo, now, detail) {
  const label = repo.revision === "main" ? repo.name : `${repo.name}@${repo.revision}`;
  const summary = el("summary", {}, el("span", { class: "name" }, label));
  if (!repo.snapshot) {
    summary.append(el("span", { class: "dim" }, "no snapshot yet"));
  } else {
    const [fraction, left] = progress(repo);
    const done = repo.snapshot.state === "done";
    summary.append(
      el("span", { class: "dim", title: repo.snapshot.commit }, `snapshot ${repo.snapshot.commit.slice(0, 12)} (${repo.snapshot.state}), ${repo.snapshot.files} files, ${size(repo.snapshot.bytes)}`),
      el("span", {}, bar(fraction, done), ` ${Math.floor(fraction * 100)}%`),
      done ? el("span", { class: "ok" }, "done") : el("span", {}, repo.rate ? `${rate(repo.rate)}${left ? ` ETA ${duration(left / repo.rate)}` : ""}` : ""));
  }
  summary.append(...flags(repo));
  const details = el("details", { class: "repo", "data-repo": repo.name, "data-blocked": repo.blocked ? "" : null, open: view.open.has(repo.name) ? "" : null }, summary);
  const body = el("div", { class: "repo-body" }, hopTable(repo));
  if (repo.poll.error) body.append(el("p", { class: "dim" }, `poll: ${repo.poll.error}`, repo.poll.hint ? el("span", { class: "hint" }, repo.poll.hint) : null));
  if (detail) body.append(fileTable(detail, repo.name));
  else if (view.open.has(repo.name)) body.append(el("p", { class: "dim" }, "loading files…"));
  details.append(body);
  details.addEventListener("toggle", () => {
    if (details.open === view.open.has(repo.name)) return;
    if (details.open) view.open.add(repo.name); else view.open.delete(repo.name);
    seen.fresh = true;
    refresh();
  });
  return details;
}

async function openDetails(summary) {
  const details = {};
  await Promise.all([...view.open].map(async (name) => {
    if (!summary.repos.some((repo) => repo.name === name)) { view.open.delete(name); return; }
    details[name] = await getJSON(`status/${encodeURIComponent(name)}`);
  }));
  return details;
}

function renderRepos(summary, now, details) {
  document.getElementById("repos-title").textContent = `Repos (${summary.repos.length})`;
  const blocks = summary.repos.map((repo) => repoBlock(repo, now, details[repo.name]));
  if (!blocks.length) blocks.push(el("p", { class: "dim" }, "none yet: add one with `relayctl add OWNER/NAME`"));
  document.getElementById("repos").replaceChildren(...blocks);
}

function renderDaemon(summary) {
  const daemon = summary.daemon;
  const pill = document.getElementById("daemon");
  const running = daemon.state === "running";
  pill.className = `pill ${running ? "ok" : "bad"}`;
  pill.textContent = running ? `running (relayd ${daemon.version || "?"})` : `daemon ${daemon.state}`;
  pill.title = daemon.hint ? `${daemon.detail} — ${daemon.hint}` : daemon.detail;
  const when = Date.parse(summary.generated_at);
  document.getElementById("updated").textContent = `updated ${clock(when, true)}`;
}

// -- throughput and bytes avoided ------------------------------------------------------------------

// The plot starts where the window does, or where relayd started if that is later: a daemon that has
// run for ten minutes shows those ten minutes across the whole width.
function renderPlot() {
  const doc = view.throughput;
  const plot = document.getElementById("plot");
  const legend = document.getElementById("legend");
  plot.replaceChildren();
  legend.replaceChildren();
  if (!doc) return;
  const span = doc.windows.find((w) => w.name === view.window);
  const hops = byRoute(Object.keys(span.hops));
  const step = span.step_seconds * 1000;
  const total = hops.length ? span.hops[hops[0]].length : 0;
  const first = Math.min(Math.max(0, Math.floor((Date.parse(doc.since) - Date.parse(span.start)) / step)), Math.max(0, total - 2));
  const series = Object.fromEntries(hops.map((hop) => [hop, span.hops[hop].slice(first)]));
  const start = Date.parse(span.start) + first * step, end = Date.parse(span.end);
  const [left, right, top, bottom] = [84, 632, 10, 176];
  const peak = Math.max(1, ...hops.flatMap((hop) => series[hop]));
  const count = Math.max(2, total - first);
  const x = (i) => left + ((right - left) * i) / (count - 1);
  const y = (v) => bottom - ((bottom - top) * v) / peak;
  for (const fraction of [0, 0.5, 1]) {
    plot.append(svg("line", { class: "axis", x1: left, y1: y(peak * fraction), x2: right, y2: y(peak * fraction) }));
    const label = svg("text", { x: left - 6, y: y(peak * fraction) + 4, "text-anchor": "end" });
    label.textContent = fraction ? rate(peak * fraction) : "0";
    plot.append(label);
    const when = svg("text", { x: left + (right - left) * fraction, y: bottom + 16, "text-anchor": ["start", "middle", "end"][fraction * 2] });
    when.textContent = clock(start + (end - start) * fraction, view.window === "hour" && end - start < 600000);
    plot.append(when);
  }
  for (const hop of hops) {
    const points = series[hop].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    plot.append(svg("polyline", { points, stroke: hopColour(hop, hops), "data-hop": hop }));
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = hopColour(hop, hops);
    legend.append(el("li", {}, swatch, `${hop} ${rate(series[hop][series[hop].length - 1])} · ${size(doc.moved[hop] || 0)} in all`));
  }
  legend.append(el("li", { class: "dim" }, hops.length
    ? `moved since relayd started at ${clock(Date.parse(doc.since), true)}`
    : "nothing moved since relayd started"));
}

function renderAvoided(doc) {
  const total = document.getElementById("avoided-total");
  const rows = document.querySelector("#avoided tbody");
  rows.replaceChildren();
  const files = doc.avoided.reduce((sum, item) => sum + item.files, 0);
  total.textContent = files
    ? `${size(doc.total_bytes)} not moved, in ${count(files, "transfer")} the catalogue holds:`
    : "nothing yet: no rapid upload, no object the server had, nothing staged or on the drive already.";
  for (const item of doc.avoided) {
    rows.append(el("tr", {}, el("td", {}, item.hop), el("td", {}, REASONS[item.reason] || item.reason),
      el("td", { class: "num" }, count(item.files, "file")), el("td", { class: "num" }, size(item.bytes))));
  }
}

// -- the loop --------------------------------------------------------------------------------------

let lastPlot = 0;
let timer = null;
let busy = false;
let again = false;

// Redraw now (a refresh already under way runs once more when it is done), then every REFRESH_MS
// while the page is visible.
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  clearTimeout(timer);
  const problem = document.getElementById("problem");
  try {
    const summary = await getJSON("status");
    const details = await openDetails(summary);
    if (seen.fresh) { // unchanged documents (304) leave the page as it is
      const now = Date.parse(summary.generated_at);
      renderDaemon(summary);
      renderAttention(summary, now);
      renderRepos(summary, now, details);
      seen.fresh = false;
    }
    if (Date.now() - lastPlot >= PLOT_REFRESH_MS) {
      lastPlot = Date.now();
      view.throughput = await getJSON("throughput");
      renderPlot();
      renderAvoided(await getJSON("avoided"));
    }
    problem.hidden = true;
  } catch (failure) {
    problem.textContent = `cannot read relayd's status: ${failure.message} (trying again)`;
    problem.hidden = false;
  }
  busy = false;
  if (again) { again = false; refresh(); return; }
  if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => {
    view.window = button.dataset.window;
    for (const other of document.querySelectorAll(".tabs button")) other.setAttribute("aria-pressed", String(other === button));
    renderPlot();
  });
}
refresh();
