// The billing page: usage per day (an SVG bar chart drawn here), invoices, and a live feed of CDRs.
// The page itself is public; every data call carries the bearer token, taken from "#token=..." in the
// address or typed into the form, and kept in sessionStorage only.
"use strict";

const COLORS = ["#2463b8", "#e08a1e", "#2e9e5b", "#a34fc2", "#c9433a", "#5d7b91"];
const FEED_ROWS = 50;
const state = { token: "", account: null, currency: "", services: [] };

function $(id) { return document.getElementById(id); }

function money(minor, currency) {
  // Minor units of a two-decimal currency (the usual case: EUR, USD); the API gives integers.
  return (minor / 100).toFixed(2) + (currency ? " " + currency : "");
}

function setStatus(text) { $("status").textContent = text || ""; }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + response.status + " " + detail);
  }
  return response;
}

async function getJson(path) { return (await api(path)).json(); }

function svg(tag, attributes, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function daysBetween(first, last) {
  const days = [];
  for (let day = new Date(first + "T00:00:00Z"); day <= new Date(last + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
    days.push(day.toISOString().slice(0, 10));
  }
  return days;
}

function niceStep(rough) {
  // 1, 2 or 5 times a power of ten: axis labels a person reads at a glance.
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= rough);
}

function drawChart(usage) {
  const chart = $("chart");
  chart.replaceChildren();
  $("legend").replaceChildren();
  if (!usage.days.length) {
    chart.textContent = "No usage yet.";
    return;
  }
  const services = [...new Set(usage.days.map((d) => d.service))].sort();
  const byDay = new Map();
  for (const row of usage.days) {
    if (!byDay.has(row.day)) byDay.set(row.day, {});
    byDay.get(row.day)[row.service] = row;
  }
  const sorted = [...byDay.keys()].sort();
  let days = daysBetween(sorted[0], sorted[sorted.length - 1]);
  if (days.length > 62) days = days.slice(-62); // the last two months at most
  const totals = days.map((day) => services.reduce((sum, s) => sum + ((byDay.get(day) || {})[s]?.amount_minor || 0), 0));
  const step10 = niceStep(Math.max(1, ...totals) / 4);
  const top = step10 * Math.ceil(Math.max(1, ...totals) / step10);
  const width = 900, height = 260, left = 64, bottom = 34, top_pad = 10;
  const plotHeight = height - bottom - top_pad;
  const step = (width - left - 10) / days.length;
  const barWidth = Math.max(2, step * 0.7);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "usage per day" });
  const ticks = Math.round(top / step10);
  for (let i = 0; i <= ticks; i++) {
    const value = step10 * i;
    const y = top_pad + plotHeight - (plotHeight * i) / ticks;
    root.append(svg("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "axis" }));
    root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, money(Math.round(value), "")));
  }
  const labelEvery = Math.ceil(days.length / 12);
  days.forEach((day, index) => {
    const x = left + index * step + (step - barWidth) / 2;
    let y = top_pad + plotHeight;
    services.forEach((service, s) => {
      const row = (byDay.get(day) || {})[service];
      if (!row || row.amount_minor <= 0) return;
      const h = (plotHeight * row.amount_minor) / top;
      y -= h;
      const bar = svg("rect", {
        x: x.toFixed(1), y: y.toFixed(1), width: barWidth.toFixed(1), height: Math.max(h, 0.5).toFixed(1),
        fill: COLORS[s % COLORS.length], class: "bar",
        "data-day": day, "data-service": service, "data-amount": row.amount_minor,
      });
      bar.append(svg("title", {}, `${day} ${service}: ${money(row.amount_minor, usage.currency)}, ` +
        `${row.cdr_count} CDRs, ${Math.round(row.duration_seconds)} s`));
      root.append(bar);
    });
    if (index % labelEvery === 0) {
      root.append(svg("text", { x: x + barWidth / 2, y: height - bottom + 16, "text-anchor": "middle" }, day.slice(5)));
    }
  });
  chart.append(root);
  services.forEach((service, s) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = COLORS[s % COLORS.length];
    item.append(swatch, `${service}: ${money(usage.totals[service].amount_minor, usage.currency)}`);
    $("legend").append(item);
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function download(invoice, format) {
  try {
    const blob = await (await api(`/billing/invoices/${invoice.id}/export?format=${format}`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${invoice.number || "open-" + invoice.id}.${format}`;
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (error) { setStatus(error.message); }
}

function drawInvoices(invoices) {
  const body = $("invoices").tBodies[0];
  body.replaceChildren();
  for (const invoice of invoices) {
    const row = document.createElement("tr");
    row.dataset.invoiceId = invoice.id;
    row.className = "invoice";
    const period = `${invoice.period_start.slice(0, 10)} – ${invoice.period_end.slice(0, 10)}`;
    row.append(cell(invoice.number || "(open)"), cell(period), cell(invoice.status, "status-" + invoice.status),
      cell(money(invoice.total_minor, invoice.currency), "num"));
    const exports = document.createElement("td");
    for (const format of ["json", "csv"]) {
      const button = document.createElement("button");
      button.className = "link";
      button.textContent = format.toUpperCase();
      button.addEventListener("click", () => download(invoice, format));
      exports.append(button);
    }
    row.append(exports);
    body.append(row);
  }
  if (!invoices.length) {
    const row = document.createElement("tr");
    row.append(cell("No invoices yet."));
    body.append(row);
  }
}

function addFeedRow(item) {
  const body = $("feed").tBodies[0];
  const row = document.createElement("tr");
  row.className = "cdr fresh";
  row.dataset.cdrId = item.cdr_id;
  row.append(
    cell((item.started_at || "").replace("T", " ").slice(0, 19)),
    cell(item.served_party || ""),
    cell(item.called_party || ""),
    cell(item.node_address || ""),
    cell(item.service || (item.account_id ? "unrated" : "no account")),
    cell(String(Math.round(item.duration_seconds || 0)), "num"),
    cell(money(item.amount_minor || 0, state.currency), "num"),
  );
  body.prepend(row);
  while (body.rows.length > FEED_ROWS) body.deleteRow(body.rows.length - 1);
}

let refreshTimer = null;
function refreshSoon() {
  // Many CDRs arrive in bursts: redraw the chart and invoices once per burst.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadAccount().catch((e) => setStatus(e.message)), 500);
}

let feedAbort = null;
async function follow() {
  if (feedAbort) feedAbort.abort();
  feedAbort = new AbortController();
  const signal = feedAbort.signal;
  let after = null;
  while (!signal.aborted) {
    try {
      const query = `account=${state.account}` + (after !== null ? `&after=${after}` : "");
      // fetch rather than EventSource: EventSource cannot send the Authorization header.
      const response = await fetch(`/billing/feed?${query}`, {
        headers: { Authorization: "Bearer " + state.token, Accept: "text/event-stream" }, signal,
      });
      if (!response.ok) throw new Error("feed: " + response.status);
      $("feed-state").textContent = "live";
      $("feed-state").className = "pill live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (!data) continue;
          const item = JSON.parse(data);
          after = item.id;
          addFeedRow(item);
          refreshSoon();
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      setStatus(error.message);
    }
    $("feed-state").textContent = "reconnecting";
    $("feed-state").className = "pill";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function loadAccount() {
  const id = state.account;
  const [account, usage, invoices] = await Promise.all([
    getJson(`/billing/accounts/${id}`),
    getJson(`/billing/accounts/${id}/usage`),
    getJson(`/billing/invoices?account=${id}&limit=24`),
  ]);
  state.currency = account.currency;
  $("account-name").textContent = `— ${account.name} (${account.subscribers.join(", ")})`;
  drawChart(usage);
  drawInvoices(invoices.items.sort((a, b) => b.period_start.localeCompare(a.period_start)));
  document.body.dataset.loaded = "true";
}

async function start() {
  setStatus("");
  if (!state.token) { setStatus("Enter an API token to see the account."); return; }
  const accounts = (await getJson("/billing/accounts?limit=500")).items;
  const select = $("account");
  select.replaceChildren(...accounts.map((a) => new Option(a.name, a.id)));
  if (!accounts.length) { setStatus("No accounts yet."); return; }
  const wanted = new URLSearchParams(location.search).get("account");
  state.account = accounts.some((a) => String(a.id) === wanted) ? wanted : String(accounts[0].id);
  select.value = state.account;
  await loadAccount();
  follow();
}

function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("billing-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search); // keep the token out of the address bar
  }
  state.token = sessionStorage.getItem("billing-token") || "";
  $("token").value = state.token;
  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("billing-token", state.token);
    const url = new URL(location.href);
    if ($("account").value) url.searchParams.set("account", $("account").value);
    history.replaceState(null, "", url);
    start().catch((e) => setStatus(e.message));
  });
  start().catch((e) => setStatus(e.message));
}

init();
