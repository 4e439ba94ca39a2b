// The usage dashboard. Everything it shows comes from OpenMeter's own API (meters,
// meter queries, events), called from this page like any client would; it runs the same
// against the local server and, through `litellm-openmeter dashboard`, any OpenMeter.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "litellm-openmeter-token";
const PALETTE = ["#2f5bd3", "#e07b00", "#1a9e77", "#c2306b", "#7b52c7", "#8a8f1c",
  "#0b8fb3", "#b34a2a", "#9aa3b2"];
const TOP_SERIES = 8;
const EVENTS_SHOWN = 50;
const METRICS = {
  cost: { label: "Cost", format: money },
  calls: { label: "Calls", format: count },
  input: { label: "Input tokens", format: count },
  output: { label: "Output tokens", format: count },
  cached: { label: "Cached tokens", format: count },
  failures: { label: "Failures", format: count },
};
// The tokens shape splits a call's tokens by type; these sums give the litellm shape's
// prompt (cached included), completion (reasoning included) and cache-read counts.
const TOKEN_TYPES = {
  input: ["input", "cache_read", "cache_creation"],
  output: ["output", "reasoning"],
  cached: ["cache_read"],
};

let token = sessionStorage.getItem(TOKEN_KEY);
let config = null;
let meterList = null;
let generation = 0;
const sorting = new Map();

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// Formatters made once: toLocaleString builds one per call, which a table of a few
// hundred rows would feel.
const DOLLARS = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const CENTS = new Intl.NumberFormat("en-US", { minimumFractionDigits: 4, maximumFractionDigits: 4 });
const WHOLE = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const WHEN = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

function money(value) {
  return "$" + (Math.abs(value) >= 100 ? DOLLARS : CENTS).format(value);
}

function count(value) {
  return WHOLE.format(Math.round(value));
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

// --- The API ---------------------------------------------------------------------------

async function api(path, params, accept = "application/json") {
  const query = params ? "?" + params.toString() : "";
  const headers = { Accept: accept };
  if (token) headers.Authorization = "Bearer " + token;
  let response;
  try {
    response = await fetch(path + query, { headers, cache: "no-store" });
  } catch (error) {
    throw new ApiError(`GET ${path}: no answer from the server (${error.message})`, 0);
  }
  const text = await response.text();
  if (response.status === 401) throw new ApiError("this server asks for a token", 401);
  if (!response.ok) {
    let detail = text.trim().slice(0, 400) || response.statusText;
    try {
      const problem = JSON.parse(text);
      detail = problem.detail || problem.title || detail;
    } catch { /* not problem+json: the text itself */ }
    throw new ApiError(`GET ${path}: HTTP ${response.status}: ${detail}`, response.status);
  }
  if (accept !== "application/json") return text;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(`GET ${path}: the answer is not JSON: ${text.trim().slice(0, 120) || "(empty)"}`,
      response.status);
  }
}

function malformed(path, what) {
  return new ApiError(`GET ${path}: malformed answer (${what})`, 200);
}

async function queryMeter(meter, period, groupBy, windowed) {
  const path = `/api/v1/meters/${encodeURIComponent(meter.slug)}/query`;
  const params = periodParams(period);
  for (const key of groupBy) params.append("groupBy", key);
  if (windowed) params.set("windowSize", period.window);
  if (period.subject) params.append("subject", period.subject);
  const result = await api(path, params);
  if (!result || !Array.isArray(result.data)) throw malformed(path, "no data array");
  for (const row of result.data) {
    if (typeof row.value !== "number" || (windowed && Number.isNaN(Date.parse(row.windowStart)))) {
      throw malformed(path, "a row without a numeric value or window");
    }
  }
  return result.data;
}

function periodParams(period) {
  return new URLSearchParams({ from: iso(period.from), to: iso(period.to), windowTimeZone: period.zone });
}

function iso(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

// --- Which meters read which events ------------------------------------------------------

function meterSets(meters) {
  const sets = [];
  const types = [...new Set(meters.map((m) => m.eventType))].sort();
  for (const type of types) {
    const own = meters.filter((m) => m.eventType === type);
    const sum = (property) => own.find((m) => m.aggregation === "SUM" && m.valueProperty === property);
    const failures = meters.find((m) => m.eventType === `${type}_failure` && m.aggregation === "COUNT");
    const cost = sum("$.cost");
    const tokens = sum("$.tokens");
    if (sum("$.prompt_tokens")) {
      sets.push({
        key: type, shape: "litellm", cost, failures,
        calls: own.find((m) => m.aggregation === "COUNT"),
        input: sum("$.prompt_tokens"), output: sum("$.completion_tokens"), cached: sum("$.cache_read_tokens"),
        total: sum("$.total_tokens"),
      });
    } else if (tokens && tokens.groupBy && "type" in tokens.groupBy) {
      sets.push({
        key: type, shape: "tokens", cost, failures, tokens,
        calls: own.find((m) => m.aggregation === "UNIQUE_COUNT" && m.valueProperty === "$.call_id")
          || own.find((m) => m.aggregation === "COUNT"),
      });
    }
  }
  return sets;
}

function groupable(meter, key) {
  return key === "subject" || Boolean(meter.groupBy && key in meter.groupBy);
}

// --- Period and state --------------------------------------------------------------------

function readState() {
  const hash = new URLSearchParams(location.hash.slice(1));
  return {
    period: hash.get("period") || "30d",
    window: hash.get("window") === "HOUR" ? "HOUR" : "DAY",
    stack: hash.get("stack") === "subject" ? "subject" : "model",
    subject: hash.get("subject"),
    from: hash.get("from"),
    to: hash.get("to"),
    set: hash.get("events"),
  };
}

function writeState(changes) {
  const state = { ...readState(), ...changes };
  const hash = new URLSearchParams();
  for (const [name, key] of [["period", "period"], ["window", "window"], ["stack", "stack"],
    ["subject", "subject"], ["from", "from"], ["to", "to"], ["events", "set"]]) {
    if (state[key]) hash.set(name, state[key]);
  }
  location.hash = hash.toString();
}

function localDay(text) {
  const [year, month, day] = text.split("-").map(Number);
  return new Date(year, month - 1, day);
}

function dayText(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

// The period in the browser's time zone, on window boundaries: days start at local
// midnight, hours on the local hour.
function resolvePeriod(state, now = new Date()) {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  let from;
  let to;
  if (state.period === "custom" && state.from && state.to) {
    from = localDay(state.from);
    const last = localDay(state.to);
    to = new Date(last.getFullYear(), last.getMonth(), last.getDate() + 1);
    if (to <= from) to = new Date(from.getFullYear(), from.getMonth(), from.getDate() + 1);
  } else if (state.window === "HOUR") {
    const hours = { "24h": 24, "7d": 168, "30d": 720 }[state.period] || 720;
    to = new Date(now.getFullYear(), now.getMonth(), now.getDate(), now.getHours() + 1);
    from = new Date(to.getTime() - hours * 3600e3);
  } else {
    const days = { "24h": 2, "7d": 7, "30d": 30 }[state.period] || 30;
    to = new Date(now.getFullYear(), now.getMonth(), now.getDate() + 1);
    from = new Date(now.getFullYear(), now.getMonth(), now.getDate() + 1 - days);
  }
  return { from, to, zone, window: state.window, subject: state.subject || null };
}

function windowStarts(period) {
  const starts = [];
  let moment = period.from;
  while (moment < period.to && starts.length < 5000) {
    starts.push(moment.getTime());
    moment = period.window === "HOUR"
      ? new Date(moment.getTime() + 3600e3)
      : new Date(moment.getFullYear(), moment.getMonth(), moment.getDate() + 1);
  }
  return starts;
}

// --- Loading -----------------------------------------------------------------------------

// Two queries per meter for the tables and totals (per subject, per model; no windows)
// and two for the charts (cost and tokens per window), in parallel. Each is one the
// server answers from a small rollup: per subject without models, per model without
// subjects.
async function loadUsage(set, period, stack) {
  const jobs = {};
  const byModel = (meter) => (groupable(meter, "model") ? ["model"] : []);
  const stackBy = (meter) => (groupable(meter, stack) ? [stack] : []);
  const tables = set.shape === "tokens"
    ? { cost: set.cost, calls: set.calls }
    : { cost: set.cost, calls: set.calls, input: set.input, output: set.output, cached: set.cached };
  for (const [metric, meter] of Object.entries(tables)) {
    if (!meter) continue;
    jobs[`model:${metric}`] = queryMeter(meter, period, byModel(meter), false);
    if (!period.subject) jobs[`subject:${metric}`] = queryMeter(meter, period, ["subject"], false);
  }
  if (set.tokens) {
    jobs["model:tokens"] = queryMeter(set.tokens, period, [...byModel(set.tokens), "type"], false);
    if (!period.subject) jobs["subject:tokens"] = queryMeter(set.tokens, period, ["subject", "type"], false);
  }
  if (set.failures) jobs["model:failures"] = queryMeter(set.failures, period, byModel(set.failures), false);
  if (set.cost) jobs["chart:cost"] = queryMeter(set.cost, period, stackBy(set.cost), true);
  const tokens = set.tokens || set.total;
  if (tokens) {
    jobs["chart:tokens"] = queryMeter(tokens, period, stackBy(tokens), true);
  } else {
    if (set.input) jobs["chart:input"] = queryMeter(set.input, period, stackBy(set.input), true);
    if (set.output) jobs["chart:output"] = queryMeter(set.output, period, stackBy(set.output), true);
  }
  const names = Object.keys(jobs);
  const results = await Promise.all(Object.values(jobs));
  const data = Object.fromEntries(names.map((name, i) => [name, results[i]]));
  if (!tokens) data["chart:tokens"] = [...(data["chart:input"] || []), ...(data["chart:output"] || [])];
  if (set.tokens) {
    for (const dimension of ["model", "subject"]) {
      const rows = data[`${dimension}:tokens`];
      if (!rows) continue;
      for (const [metric, types] of Object.entries(TOKEN_TYPES)) {
        data[`${dimension}:${metric}`] = rows.filter((row) => types.includes(row.groupBy?.type));
      }
    }
  }
  return data;
}

function keyOf(row, dimension) {
  const value = dimension === "subject" ? row.subject : row.groupBy?.[dimension];
  return value === null || value === undefined || value === "" ? "(none)" : String(value);
}

// One row per key (subject or model) with every metric summed over the period.
function tabulate(data, dimension, metrics) {
  const rows = new Map();
  for (const metric of metrics) {
    for (const row of data[`${dimension}:${metric}`] || []) {
      const key = keyOf(row, dimension);
      if (!rows.has(key)) rows.set(key, Object.fromEntries([["key", key], ...metrics.map((m) => [m, 0])]));
      rows.get(key)[metric] += row.value;
    }
  }
  return [...rows.values()];
}

function totalOf(data, metric) {
  const rows = data[`model:${metric}`];
  return rows ? rows.reduce((sum, row) => sum + row.value, 0) : null;
}

// --- Drawing -----------------------------------------------------------------------------

function renderTotals(data, subjectCount, view) {
  const box = $("totals");
  box.replaceChildren();
  for (const metric of ["cost", "calls", "input", "output", "cached", "failures"]) {
    const value = totalOf(data, metric);
    box.append(el("div", { class: "total", "data-metric": metric, "data-value": value ?? "" },
      el("div", { class: "label", text: METRICS[metric].label }),
      el("div", { class: "value", text: value === null ? "–" : METRICS[metric].format(value) })));
  }
  const label = view === "subject" ? "Models" : "Subjects";
  box.append(el("div", { class: "total", "data-metric": label.toLowerCase(), "data-value": subjectCount },
    el("div", { class: "label", text: label }), el("div", { class: "value", text: count(subjectCount) })));
}

function seriesOf(rowsByMetric, stack, starts) {
  const totals = new Map();
  for (const rows of rowsByMetric) {
    for (const row of rows) {
      const key = keyOf(row, stack);
      totals.set(key, (totals.get(key) || 0) + row.value);
    }
  }
  const ordered = [...totals.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([key]) => key);
  const shown = ordered.length > TOP_SERIES + 1 ? ordered.slice(0, TOP_SERIES) : ordered;
  const keys = ordered.length > shown.length ? [...shown, "Other"] : shown;
  return { keys, color: (key) => PALETTE[key === "Other" ? PALETTE.length - 1 : keys.indexOf(key) % (PALETTE.length - 1)], starts };
}

function matrix(rowsByMetric, stack, series) {
  const index = new Map(series.starts.map((start, i) => [start, i]));
  const values = series.keys.map(() => series.starts.map(() => 0));
  for (const rows of rowsByMetric) {
    for (const row of rows) {
      const column = index.get(Date.parse(row.windowStart));
      if (column === undefined) continue;
      let line = series.keys.indexOf(keyOf(row, stack));
      if (line < 0) line = series.keys.length - 1; // "Other"
      values[line][column] += row.value;
    }
  }
  return values;
}

function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart(target, values, series, format, window) {
  const width = 600;
  const height = 220;
  const left = 58;
  const bottom = 22;
  const top = 8;
  const columns = series.starts.length;
  const sums = series.starts.map((_, column) => values.reduce((sum, line) => sum + line[column], 0));
  const ceiling = niceCeiling(Math.max(0, ...sums));
  const plotWidth = width - left - 4;
  const plotHeight = height - top - bottom;
  const step = plotWidth / Math.max(columns, 1);
  const bar = Math.max(1, step * 0.8);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": target.id.replace("chart-", "") + " over time" });
  for (let tick = 0; tick <= 4; tick++) {
    const y = top + plotHeight - (plotHeight * tick) / 4;
    chart.append(svg("line", { class: "grid", x1: left, x2: width - 4, y1: y, y2: y }));
    chart.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, format((ceiling * tick) / 4)));
  }
  const labelEvery = Math.max(1, Math.ceil(columns / 6));
  const dateFormat = new Intl.DateTimeFormat(undefined, window === "HOUR"
    ? { month: "short", day: "numeric", hour: "2-digit" } : { month: "short", day: "numeric" });
  series.starts.forEach((start, column) => {
    const x = left + column * step + (step - bar) / 2;
    let base = top + plotHeight;
    series.keys.forEach((key, line) => {
      const value = values[line][column];
      if (value <= 0) return;
      const h = (value / ceiling) * plotHeight;
      base -= h;
      chart.append(svg("rect", { x, y: base, width: bar, height: Math.max(h, 0.5), fill: series.color(key) },
        svg("title", {}, `${dateFormat.format(new Date(start))} · ${key}: ${format(value)}`)));
    });
    if (column % labelEvery === 0) {
      chart.append(svg("text", { x: left + column * step + step / 2, y: height - 6, "text-anchor": "middle" },
        dateFormat.format(new Date(start))));
    }
  });
  target.replaceChildren(chart);
}

function renderCharts(data, stack, period) {
  const starts = windowStarts(period);
  const tokenRows = [data["chart:tokens"] || []];
  const costRows = [data["chart:cost"] || []];
  const series = seriesOf([...costRows, ...tokenRows], stack, starts);
  drawChart($("chart-cost"), matrix(costRows, stack, series), series, money, period.window);
  drawChart($("chart-tokens"), matrix(tokenRows, stack, series), series, count, period.window);
  $("legend").replaceChildren(...series.keys.map((key) => {
    const item = el("span", { text: key });
    item.style.setProperty("--swatch", series.color(key)); // CSSOM: allowed by the page's CSP
    return item;
  }));
}

function renderTable(table, columns, rows, options = {}) {
  const id = table.id;
  const sort = sorting.get(id) || options.sort || { key: columns[1].key, descending: true };
  const ordered = [...rows].sort((a, b) => {
    const x = a[sort.key];
    const y = b[sort.key];
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sort.descending ? -order : order;
  });
  const head = el("tr", {}, ...columns.map((column) => el("th", {
    class: column.num ? "num" : null, scope: "col", "data-key": column.key,
    "aria-sort": sort.key === column.key ? (sort.descending ? "descending" : "ascending") : "none",
    text: column.label,
    onclick: () => {
      sorting.set(id, { key: column.key, descending: sort.key === column.key ? !sort.descending : Boolean(column.num) });
      renderTable(table, columns, rows, options);
    },
  })));
  const body = ordered.map((row) => el("tr", {
    class: [options.onclick ? "clickable" : "", row.invalid ? "invalid" : ""].join(" ").trim() || null,
    "data-key": row.key, tabindex: options.onclick ? 0 : null,
    onclick: options.onclick ? () => options.onclick(row) : null,
    onkeydown: options.onclick ? (event) => { if (event.key === "Enter") options.onclick(row); } : null,
  }, ...columns.map((column) => {
    const value = row[column.key];
    const cell = el("td", { class: column.num ? "num" : null, "data-key": column.key,
      "data-value": typeof value === "number" ? value : null });
    if (column.render) cell.append(column.render(row));
    else cell.textContent = column.format && typeof value === "number" ? column.format(value) : (value ?? "");
    return cell;
  })));
  const empty = rows.length ? [] : [el("tr", {}, el("td", { colspan: columns.length, class: "muted", text: options.empty || "nothing in this period" }))];
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body, ...empty));
}

function metricColumns(metrics) {
  return metrics.map((metric) => ({ key: metric, label: METRICS[metric].label, num: true, format: METRICS[metric].format }));
}

function csvControl(holder, set, dimension, period) {
  const choices = set.shape === "tokens"
    ? [["cost", set.cost], ["calls", set.calls], ["tokens by type", set.tokens]]
    : [["cost", set.cost], ["calls", set.calls], ["input tokens", set.input], ["output tokens", set.output], ["cached tokens", set.cached]];
  if (dimension === "model" && set.failures) choices.push(["failures", set.failures]);
  const usable = choices.filter(([, meter]) => meter && groupable(meter, dimension));
  const select = el("select", { "aria-label": `CSV of the ${dimension} table: meter` },
    ...usable.map(([label, meter]) => el("option", { value: meter.slug, text: `${label} (${meter.slug})` })));
  const button = el("button", { type: "button", text: "Download CSV", onclick: async () => {
    const meter = usable.find(([, m]) => m.slug === select.value)[1];
    const params = periodParams(period);
    params.append("groupBy", dimension);
    if (meter === set.tokens) params.append("groupBy", "type");
    if (period.subject) params.append("subject", period.subject);
    try {
      const text = await api(`/api/v1/meters/${encodeURIComponent(meter.slug)}/query`, params, "text/csv");
      const link = el("a", {
        href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
        download: `${meter.slug}-by-${dimension}-${dayText(period.from)}-${dayText(new Date(period.to.getTime() - 1))}.csv`,
      });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (error) {
      showError(error);
    }
  } });
  holder.replaceChildren(select, button);
}

function eventCells(item) {
  const event = item.event || {};
  const data = event.data && typeof event.data === "object" ? event.data : {};
  let tokens = "";
  if (typeof data.prompt_tokens === "number" || typeof data.completion_tokens === "number") {
    tokens = `${count(data.prompt_tokens || 0)} in / ${count(data.completion_tokens || 0)} out`;
  } else if (typeof data.tokens === "number") {
    tokens = `${count(data.tokens)} ${data.type || ""}`.trim();
  }
  return {
    key: `${event.source}/${event.id}`,
    time: event.time ? WHEN.format(new Date(event.time)) : "",
    subject: event.subject || "",
    type: event.type || "",
    model: data.model || "",
    tokens,
    cost: typeof data.cost === "number" ? data.cost : "",
    invalid: Boolean(item.validationError),
    status: item.validationError || "",
    sortTime: Date.parse(event.time || "") || 0,
  };
}

function renderEvents(items) {
  const rows = items.map(eventCells);
  renderTable($("events"), [
    { key: "sortTime", label: "Time", render: (row) => document.createTextNode(row.time) },
    { key: "subject", label: "Subject" },
    { key: "type", label: "Type" },
    { key: "model", label: "Model" },
    { key: "tokens", label: "Tokens", num: true },
    { key: "cost", label: "Cost", num: true, format: money },
    { key: "status", label: "Metered", render: (row) => row.invalid
      ? el("span", {}, el("span", { class: "badge bad", text: "not metered" }), " ", row.status)
      : el("span", { class: "badge", text: "ok" }) },
  ], rows, { sort: { key: "sortTime", descending: true }, empty: "no events in this period" });
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${seconds.toFixed(0)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function renderDelivery() {
  const health = await api("/dashboard/delivery.json");
  const box = $("delivery");
  const cell = (label, value, name, cls) => el("div", { class: "total", "data-metric": name },
    el("div", { class: "label", text: label }), el("div", { class: `value ${cls || ""}`, text: value }));
  const items = [
    cell("Queued", count(health.queued || 0), "queued"),
    cell("Oldest waiting", age(health.oldest_age_seconds), "oldest"),
    cell("Dead letters", count(health.dead_lettered || 0), "dead", health.dead_lettered ? "bad" : ""),
    cell("Delivery", health.paused ? "paused" : (health.exists ? "running" : "no outbox"), "paused"),
  ];
  const parts = [el("div", { class: "health" }, ...items)];
  if (health.paused) parts.push(el("p", { class: "badge warn", text: `Paused: ${health.paused}` }));
  if (!health.exists) parts.push(el("p", { class: "muted", text: `No outbox at ${health.path} yet.` }));
  const reasons = Object.entries(health.reasons || {});
  if (reasons.length) {
    parts.push(el("p", {}, "Reasons: ", ...reasons.map(([reason, n]) => el("span", { class: "badge bad", text: `${reason} × ${n}` }))));
    const table = el("table", { id: "dead-letters" });
    parts.push(el("div", { class: "scroll" }, table));
    box.replaceChildren(...parts);
    renderTable(table, [
      { key: "failedAt", label: "Failed at" }, { key: "reason", label: "Reason" },
      { key: "subject", label: "Subject" }, { key: "detail", label: "Detail" },
    ], (health.dead_letters || []).map((letter) => ({ ...letter, key: letter.id })),
    { sort: { key: "failedAt", descending: true } });
  } else {
    box.replaceChildren(...parts);
  }
}

// --- The page ----------------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  box.textContent = `Could not load the usage. ${error.message}`;
  box.hidden = false;
  document.body.dataset.state = "error";
}

function showLogin() {
  $("login").hidden = false;
  $("content").hidden = true;
  $("loading").hidden = true;
  document.body.dataset.state = "login";
  $("token").focus();
}

function describe(period) {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const text = $("period-text");
  text.textContent = `${format.format(period.from)} – ${format.format(period.to)} (${period.zone}), `
    + `${period.window === "HOUR" ? "hourly" : "daily"} windows`;
  text.dataset.from = iso(period.from);
  text.dataset.to = iso(period.to);
  text.dataset.zone = period.zone;
}

function emptyHint(sets) {
  const box = $("empty");
  const origin = location.origin;
  if (!sets.length) {
    box.replaceChildren(el("strong", { text: "No meters here read LiteLLM usage events yet." }), " ",
      "Create them with ", el("code", { text: "litellm-openmeter meters --apply" }), ".");
    return;
  }
  const direct = config && config.source === "local server";
  box.replaceChildren(el("strong", { text: "No usage in this period yet." }), " ",
    "Try a longer period, or make some: ", el("code", { text: "litellm-openmeter demo --keep" }),
    " runs a few LiteLLM calls into a server of its own and prints its dashboard's address. ",
    ...(direct ? ["To bill your own calls here, set ", el("code", { text: `OPENMETER_API_ENDPOINT=${origin}` }),
      " and add ", el("code", { text: "OpenMeterLogger()" }), " to LiteLLM's callbacks."] : []));
}

async function load() {
  const mine = ++generation;
  const state = readState();
  $("error").hidden = true;
  $("loading").hidden = false;
  document.body.dataset.state = "loading";
  try {
    const period = resolvePeriod(state);
    describe(period);
    const eventParams = periodParams(period);
    eventParams.delete("windowTimeZone");
    eventParams.set("limit", String(EVENTS_SHOWN));
    if (period.subject) eventParams.set("subject", period.subject);
    const [loaded, meters, events] = await Promise.all([config || api("/dashboard/config.json"),
      meterList || api("/api/v1/meters"), api("/api/v1/events", eventParams)]);
    if (!Array.isArray(meters)) {
      throw malformed("/api/v1/meters", `not a list: ${JSON.stringify(meters).slice(0, 80)}`);
    }
    if (!Array.isArray(events)) throw malformed("/api/v1/events", "not a list");
    config = loaded;
    meterList = meters;
    const sets = meterSets(meterList);
    $("source").textContent = `from ${config.source}`;
    syncControls(state, sets);
    if (!sets.length) {
      return finish(mine, () => {
        emptyHint(sets);
        $("empty").hidden = false;
        for (const id of ["totals", "subjects-section", "models-section"]) $(id).hidden = true;
        document.body.dataset.state = "empty";
      });
    }
    const set = chooseSet(sets, state, events);
    const [data] = await Promise.all([
      loadUsage(set, period, state.stack),
      config.delivery ? renderDelivery() : null,
    ]);
    finish(mine, () => render(set, data, events, period, state));
  } catch (error) {
    if (mine !== generation) return;
    $("loading").hidden = true;
    if (error instanceof ApiError && error.status === 401) showLogin();
    else showError(error);
  }
}

function finish(mine, draw) {
  if (mine !== generation) return;
  draw();
  $("loading").hidden = true;
  $("login").hidden = true;
  $("content").hidden = false;
  if (!document.body.dataset.state || document.body.dataset.state === "loading") document.body.dataset.state = "ready";
  document.body.dataset.readyAt = String(performance.now());
}

// Of several event types with meters (the local server has both shapes'), the one asked
// for, else that of the newest event in the period (a failure's counts as its calls').
function chooseSet(sets, state, events) {
  const asked = sets.find((set) => set.key === state.set);
  if (asked || sets.length === 1) return asked || sets[0];
  for (const item of events) {
    const type = String(item.event?.type || "").replace(/_failure$/, "");
    const found = sets.find((set) => set.key === type);
    if (found) return found;
  }
  return sets[0];
}

function render(set, data, events, period, state) {
  const metrics = ["cost", "calls", "input", "output", "cached"];
  const subjectView = Boolean(period.subject);
  $("subject-title").hidden = !subjectView;
  $("subject-title").textContent = subjectView ? period.subject : "";
  $("meter-set").value = set.key;
  const models = tabulate(data, "model", [...metrics, "failures"]);
  const subjects = subjectView ? [] : tabulate(data, "subject", metrics);
  renderTotals(data, subjectView ? models.length : subjects.length, subjectView ? "subject" : "all");
  renderCharts(data, state.stack, period);
  $("subjects-section").hidden = subjectView;
  $("totals").hidden = false;
  $("models-section").hidden = false;
  if (!subjectView) {
    renderTable($("subjects"), [{ key: "key", label: "Subject" }, ...metricColumns(metrics)], subjects,
      { onclick: (row) => writeState({ subject: row.key }) });
    csvControl($("subjects-section").querySelector(".csv"), set, "subject", period);
  }
  renderTable($("models"), [{ key: "key", label: "Model" }, ...metricColumns([...metrics, "failures"])], models);
  csvControl($("models-section").querySelector(".csv"), set, "model", period);
  renderEvents(events);
  $("delivery-section").hidden = !config.delivery;
  const empty = metrics.every((metric) => !totalOf(data, metric)) && !events.length;
  $("empty").hidden = !empty;
  if (empty) {
    emptyHint([set]);
    document.body.dataset.state = "empty";
  }
  $("footer").textContent = `Events of type ${set.key} (${set.shape} shape). Numbers from the meter API; `
    + "recent events from the events API.";
}

function syncControls(state, sets) {
  $("period").value = state.period;
  $("window").value = state.window;
  $("stack").value = state.stack;
  $("custom").hidden = state.period !== "custom";
  if (state.period === "custom") {
    $("custom-from").value = state.from || "";
    $("custom-to").value = state.to || "";
  }
  const choice = $("meter-set");
  choice.replaceChildren(...sets.map((set) => el("option", { value: set.key, text: `${set.key} (${set.shape})` })));
  $("source-choice").hidden = sets.length < 2;
}

function start() {
  $("period").addEventListener("change", (event) => {
    const period = event.target.value;
    if (period === "custom") {
      const today = new Date();
      writeState({ period, from: readState().from || dayText(new Date(today.getFullYear(), today.getMonth(), today.getDate() - 6)),
        to: readState().to || dayText(today) });
    } else {
      writeState({ period, from: null, to: null, window: period === "24h" ? "HOUR" : readState().window });
    }
  });
  for (const id of ["custom-from", "custom-to"]) {
    $(id).addEventListener("change", () => {
      if ($("custom-from").value && $("custom-to").value) writeState({ from: $("custom-from").value, to: $("custom-to").value });
    });
  }
  $("window").addEventListener("change", (event) => writeState({ window: event.target.value }));
  $("stack").addEventListener("change", (event) => writeState({ stack: event.target.value }));
  $("meter-set").addEventListener("change", (event) => writeState({ set: event.target.value }));
  $("home").addEventListener("click", (event) => {
    event.preventDefault();
    writeState({ subject: null });
  });
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    load();
  });
  window.addEventListener("hashchange", load);
  load();
}

start();
