// The mqtwist dashboard: reads the admin API every few seconds and draws
// it; its buttons call the same API.  The token is kept in this tab only
// (sessionStorage) and sent as a bearer token with every call.
"use strict";

const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("mqtwist-token") || "";

async function api(method, path, body) {
  const response = await fetch("api/" + path, {
    method,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) {
    // forgotten, so that the polling stops sending it (each refusal is logged)
    forgetToken();
    showLogin("the token was refused: give the one of --admin-token-file or MQTWIST_ADMIN_TOKEN");
    throw new Error("unauthorised");
  }
  if (!response.ok) {
    throw new Error(answer.error || response.statusText);
  }
  return answer;
}

function forgetToken() {
  token = "";
  sessionStorage.removeItem("mqtwist-token");
}

// why: the error to show, or undefined to keep the one shown
function showLogin(why) {
  $("board").hidden = true;
  $("login").hidden = false;
  if (why !== undefined) showError(why);
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function button(td, label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () => action().then(refresh).catch((e) => showError(e.message)));
  td.appendChild(b);
  return b;
}

function drawStatus(status) {
  $("version").textContent = "version " + status.version;
  // the processes of the outbox: the drain and the controls act on all of them
  const cluster = status.cluster;
  $("cluster").textContent = cluster
    ? `${cluster.member}, one of ${cluster.members.length} process(es)` : "";
  $("cluster").title = cluster ? cluster.members.join(", ") : "";
  $("service-state").textContent = status.state;
  $("service-state").dataset.state = status.state;
  $("drain").hidden = status.state !== "consuming";
  $("undrain").hidden = status.state === "consuming";
  $("outbox-depth").textContent = status.outboxDepth === null ? "–" : status.outboxDepth;
  $("in-flight").textContent = status.inFlight;
  for (const name of ["delivered", "failed", "deferred", "held"]) {
    $(name).textContent = status.totals[name] || 0;
  }
}

function drawDestinations(answer) {
  const body = $("destinations").tBodies[0];
  body.replaceChildren();
  for (const d of answer.destinations) {
    const row = body.insertRow();
    row.dataset.destination = d.destination;
    cell(row, d.destination);
    cell(row, d.inFlight, "number");
    cell(row, d.waiting, "number");
    cell(row, d.parked, "number");
    cell(row, d.limits ? d.limits.connections + " conn" + (d.limits.messagesPerMinute ? ", " + d.limits.messagesPerMinute + "/min" : "") : "");
    cell(row, d.paused ? "paused: " + d.paused.reason + (d.paused.until ? " until " + d.paused.until : "") : "open",
      d.paused ? "paused" : "open");
    cell(row, d.lastReply);
    const actions = row.insertCell();
    if (d.paused && d.paused.admin) {
      button(actions, "Resume", () => api("DELETE", "pauses", { destination: d.destination }));
    } else {
      button(actions, "Pause", () => api("POST", "pauses", { destination: d.destination, reason: "paused from the dashboard" }));
    }
    button(actions, "Cancel…", () => {
      // a destination (an MX host, a throttle rule, a smarthost) is not a
      // domain, and may serve many: the operator names the domain
      const domain = prompt("Cancel every message to the recipient domain typed here (final result " +
        "process/cancelled, no bounce); " + d.destination + " may serve several domains:", "");
      return domain ? api("POST", "cancels", { domain, reason: "cancelled from the dashboard" }) : Promise.resolve();
    });
  }
  const servers = $("servers").tBodies[0];
  servers.replaceChildren();
  for (const s of answer.servers) {
    const row = servers.insertRow();
    cell(row, s.server);
    cell(row, s.connections, "number");
    cell(row, s.idle, "number");
  }
}

function drawControls(pauses, cancels) {
  const body = $("controls").tBodies[0];
  body.replaceChildren();
  const listed = [...pauses.map((c) => ["pauses", c]), ...cancels.map((c) => ["cancels", c])];
  for (const [kind, c] of listed) {
    const row = body.insertRow();
    const selector = {};
    for (const key of ["destination", "domain", "mta", "tag"]) {
      if (c[key] !== undefined) selector[key] = c[key];
    }
    cell(row, kind === "pauses" ? "pause" : "cancel");
    cell(row, Object.entries(selector).map(([k, v]) => k + "=" + v).join(" "));
    cell(row, c.until || "until lifted");
    cell(row, c.reason);
    cell(row, c.by);
    button(row.insertCell(), kind === "pauses" ? "Resume" : "Lift", () => api("DELETE", kind, selector));
  }
}

function drawChart(history) {
  const svg = $("chart");
  const samples = history.samples;
  const lines = ["delivered", "failed", "deferred"];
  const highest = Math.max(1, ...samples.flatMap((s) => lines.map((l) => s[l])));
  $("interval").textContent = "(messages per " + history.interval + " s; top of the chart: " + highest + ")";
  const width = 600, height = 160, step = samples.length > 1 ? width / (samples.length - 1) : width;
  svg.replaceChildren();
  for (const line of lines) {
    const points = samples.map((s, i) => (i * step).toFixed(1) + "," + (height - (s[line] / highest) * (height - 10)).toFixed(1));
    const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    polyline.setAttribute("points", points.join(" "));
    polyline.setAttribute("class", line);
    svg.appendChild(polyline);
  }
  svg.dataset.highest = highest;
}

async function refresh() {
  if (!token) return showLogin();
  try {
    const [status, destinations, history, pauses, cancels] = await Promise.all([
      api("GET", "status"), api("GET", "destinations"), api("GET", "history"),
      api("GET", "pauses"), api("GET", "cancels"),
    ]);
    $("login").hidden = true;
    $("board").hidden = false;
    showError("");
    drawStatus(status);
    drawDestinations(destinations);
    drawChart(history);
    drawControls(pauses, cancels);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    // counts the pages drawn: a browser test waits for the next one
    document.body.dataset.refreshes = Number(document.body.dataset.refreshes || 0) + 1;
  } catch (e) {
    if (e.message !== "unauthorised") showError("cannot read the admin API: " + e.message);
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("mqtwist-token", token);
  refresh();
});

$("control").addEventListener("submit", (event) => {
  event.preventDefault();
  const kind = $("control-kind").value;
  const body = { [$("control-field").value]: $("control-value").value.trim() };
  const seconds = $("control-seconds").value;
  if (seconds) body.seconds = Number(seconds);
  if ($("control-reason").value) body.reason = $("control-reason").value;
  api("POST", kind, body).then(refresh).catch((e) => showError(e.message));
});

$("drain").addEventListener("click", () => api("POST", "drain").then(refresh).catch((e) => showError(e.message)));
$("undrain").addEventListener("click", () => api("POST", "undrain").then(refresh).catch((e) => showError(e.message)));

refresh();
setInterval(refresh, REFRESH_MS);
