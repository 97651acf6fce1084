// The operators' dashboard: reads /api/admin/... with the token given at sign-in. Everything
// the API says is written as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "medevents.token";
const $ = (id) => document.getElementById(id);
const byTestId = (name) => document.querySelector(`[data-testid="${name}"]`);
let timer = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function shortId(id) { return id.length > 12 ? `${id.slice(0, 12)}…` : id; }

function errorText(job) {
  const error = job.job.error;
  if (error === undefined || error === null) return "";
  if (typeof error === "string") return error;
  if (error.invalid) return `${error.invalid.length} invalid entr${error.invalid.length === 1 ? "y" : "ies"}`;
  return error.message;
}

// --- counters and chart ---

function showStats(stats) {
  const hour = stats.last_hour;
  byTestId("pending-count").textContent = stats.pending.capped ? `${stats.pending.count}+` : stats.pending.count;
  byTestId("pending-oldest").textContent = stats.pending.oldest_age_seconds === null
    ? "none waiting" : `oldest waits ${age(stats.pending.oldest_age_seconds)}`;
  byTestId("processed-count").textContent = hour.by_status.processed;
  byTestId("failed-count").textContent = hour.by_status.failed;
  byTestId("error-count").textContent = hour.by_status.failed_with_error;
  byTestId("codes").textContent = Object.entries(hour.by_status_code)
    .filter(([code]) => code !== "200").map(([code, n]) => `${code}: ${n}`).join(" · ");
  byTestId("latency").textContent = hour.processing_ms_p50 === null
    ? "–" : `≤${hour.processing_ms_p50} / ≤${hour.processing_ms_p95} ms`;
  byTestId("queue-ready").textContent = stats.queue.ready ?? "?";
  byTestId("dead-letters").textContent = stats.queue.dead_letters ?? "?";
  drawChart(stats.per_minute);
}

function drawChart(minutes) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 140, gap = 1;
  const barWidth = width / minutes.length;
  const totals = minutes.map((m) => m.processed + m.failed + m.failed_with_error);
  const top = Math.max(1, ...totals);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  minutes.forEach((minute, index) => {
    let y = height;
    for (const [key, color] of [["processed", "#2e7d32"], ["failed", "#ef6c00"], ["failed_with_error", "#c62828"]]) {
      const h = (minute[key] / top) * height;
      if (h <= 0) continue;
      y -= h;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", index * barWidth + gap / 2);
      bar.setAttribute("y", y);
      bar.setAttribute("width", Math.max(1, barWidth - gap));
      bar.setAttribute("height", h);
      bar.setAttribute("fill", color);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${minute.minute} UTC: ${minute.processed} processed, ${minute.failed} failed, ${minute.failed_with_error} errors`;
      bar.appendChild(title);
      svg.appendChild(bar);
    }
  });
  const scale = element("p", `highest bar ${top} jobs/min · ${minutes[0].minute} – ${minutes[minutes.length - 1].minute} UTC`, "muted");
  $("chart").replaceChildren(svg, scale);
}

// --- tables ---

function fillTable(testId, jobs, cells) {
  const body = byTestId(testId).querySelector("tbody");
  body.replaceChildren(...jobs.map((job) => {
    const row = element("tr", undefined, "clickable");
    row.dataset.jobId = job.id;
    cells(job).forEach(([text, className]) => row.appendChild(element("td", text, className)));
    row.addEventListener("click", () => showJob(job.id));
    return row;
  }));
}

async function refreshTables() {
  const now = Date.now();
  const pending = await api("/api/admin/jobs?status=pending&order=oldest&limit=10");
  fillTable("pending-table", pending.data, (job) => [
    [shortId(job.id), "id"], [job.type], [job.client_id ?? ""], [job.patient_id ?? "", "id"],
    [age((now - Date.parse(job.inserted_at)) / 1000)],
  ]);
  const [failed, errors] = await Promise.all([
    api("/api/admin/jobs?status=failed&limit=10"),
    api("/api/admin/jobs?status=failed_with_error&limit=10"),
  ]);
  const latest = [...failed.data, ...errors.data]
    .sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at)).slice(0, 10);
  fillTable("failures-table", latest, (job) => [
    [shortId(job.id), "id"], [job.status_code], [errorText(job)],
    [new Date(job.updated_at).toISOString().slice(11, 19)],
  ]);
}

// --- one job ---

async function showJob(jobId) {
  $("search-error").textContent = "";
  let job;
  try {
    job = (await api(`/api/admin/jobs/${encodeURIComponent(jobId)}`)).data;
  } catch (error) {
    if (!handleAuth(error)) $("search-error").textContent = error.message;
    $("detail").hidden = true;
    return;
  }
  const fields = $("detail-fields");
  fields.replaceChildren();
  for (const [name, value] of [["job", job.id], ["type", job.type], ["status", job.status],
    ["status code", job.status_code], ["client", job.client_id], ["patient", job.patient_id],
    ["request", job.request_id], ["attempts", job.attempts], ["submitted", job.inserted_at],
    ["updated", job.updated_at]]) {
    fields.append(element("dt", name), element("dd", value ?? "–"));
  }
  const error = job.job.error;
  $("detail-error-title").hidden = error === undefined;
  $("detail-error").textContent = error === undefined ? ""
    : typeof error === "string" ? error : `${error.type}: ${error.message}`;
  const invalid = $("detail-invalid");
  invalid.hidden = !(error && error.invalid);
  invalid.querySelector("tbody").replaceChildren(...((error && error.invalid) || []).map((entry) => {
    const row = element("tr");
    row.append(element("td", entry.entry, "id"),
      element("td", entry.rules.map((rule) => `${rule.rule}: ${rule.description}`).join("; ")));
    return row;
  }));
  $("detail-links").replaceChildren(...(job.job.links || []).map((link) => element("li", `${link.entity} ${link.href}`)));
  $("detail").hidden = false;
}

// --- session ---

function handleAuth(error) {
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    signOut(error.status === 403 ? "This token has no jobs:admin scope." : error.message);
    return true;
  }
  return false;
}

async function refresh() {
  try {
    showStats((await api("/api/admin/stats")).data);
    const webhooks = (await api("/api/admin/webhooks/dead-letters")).data;
    byTestId("webhook-dead-letters").textContent = webhooks.dead_letters ?? "?";
    await refreshTables();
    byTestId("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  } catch (error) {
    if (!handleAuth(error)) byTestId("updated").textContent = `not updated: ${error.message}`;
  }
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("/api/admin/stats");
  } catch (error) {
    signOut(error.status === 403 ? "This token has no jobs:admin scope." : error.message);
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("session").hidden = false;
  await refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("token").value = "";
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showJob($("search-id").value.trim());
  });
  $("replay").addEventListener("click", async () => {
    try {
      const result = (await api("/api/admin/dead-letters/replay", { method: "POST", body: "{}" })).data;
      byTestId("replay-result").textContent = `replayed ${result.replayed}`;
      await refresh();
    } catch (error) {
      if (!handleAuth(error)) byTestId("replay-result").textContent = error.message;
    }
  });
  $("webhook-replay").addEventListener("click", async () => {
    try {
      const result = (await api("/api/admin/webhooks/dead-letters/replay", { method: "POST", body: "{}" })).data;
      byTestId("webhook-replay-result").textContent = `replayed ${result.replayed}`;
      await refresh();
    } catch (error) {
      if (!handleAuth(error)) byTestId("webhook-replay-result").textContent = error.message;
    }
  });
  if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));
});
