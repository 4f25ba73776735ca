// The page: connect with a key, build the form from the model, score, watch the server.
// The key lives in this page's memory only: it is never stored.
"use strict";
const $ = (id) => document.getElementById(id);
let key = "", model = null, samples = [];

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "X-API-Key": key, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || {};
    throw new Error(`${response.status}: ${error.message || error || response.statusText}`);
  }
  return body;
}

function buildForm() {
  $("features").replaceChildren(...model.features.map((name, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "number"; input.step = "any"; input.required = true;
    input.id = `f${i}`; input.name = name; input.value = "0";
    label.append(name, input);
    return label;
  }));
  const options = samples.map((row, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `${row.fraud ? "fraud" : "legitimate"} #${i + 1}`;
    return option;
  });
  $("sample").replaceChildren(new Option("(choose a sample)", ""), ...options);
  $("sample").disabled = false;
  $("score").disabled = false;
  $("model").textContent = `${model.name} version ${model.version}`;
}

// The served models, the default first; the form follows the one picked.
function buildPicker(listing) {
  const options = listing.models.map((m) => new Option(m.name, m.name));
  $("model-pick").replaceChildren(...options);
  $("model-pick").value = listing.default_model;
  $("model-pick").disabled = options.length < 2;
}

async function useModel(name) {
  const path = `/v1/models/${encodeURIComponent(name)}`;
  model = await api(path);
  samples = await api(`${path}/samples`).then((found) => found.rows, () => []);
  $("result").hidden = true;
  buildForm();
}

$("connect-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  key = $("api-key").value.trim();
  try {
    const listing = await api("/v1/models");
    buildPicker(listing);
    await useModel(listing.default_model);
    showError("");
  } catch (error) {
    showError(`Cannot connect: ${error.message}`);
  }
});

$("model-pick").addEventListener("change", async () => {
  try {
    await useModel($("model-pick").value);
    showError("");
  } catch (error) {
    showError(`Cannot load the model: ${error.message}`);
  }
});

$("sample").addEventListener("change", () => {
  const row = samples[Number($("sample").value)];
  if (row) row.features.forEach((value, i) => { $(`f${i}`).value = value; });
});

$("score-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const features = model.features.map((_, i) => Number($(`f${i}`).value));
  const started = performance.now();
  try {
    const answer = await api(`/v1/models/${encodeURIComponent(model.name)}/score`, {
      method: "POST",
      // The reasons for every decision, APPROVE too: an analyst wants to see them all.
      body: JSON.stringify({ transaction_id: "ui", features, explain: true }),
    });
    showResult(answer, performance.now() - started);
    showError("");
  } catch (error) {
    showError(`Not scored: ${error.message}`);
  }
});

function showResult(answer, ms) {
  const percent = (p) => `${(100 * p).toFixed(1)}%`;
  $("result").hidden = false;
  $("decision").textContent = answer.decision;
  $("decision").className = answer.decision;
  $("fill").style.width = percent(answer.fraud_probability);
  $("review-mark").style.left = percent(model.thresholds.review);
  $("decline-mark").style.left = percent(model.thresholds.decline);
  $("probability").textContent = answer.fraud_probability.toFixed(4);
  $("version").textContent = answer.model_version;
  $("ood").textContent = answer.out_of_distribution
    ? `yes: ${answer.unusual_features.join(", ")}` : "no";
  $("rtt").textContent = `${ms.toFixed(1)} ms`;
  showReasons(answer.reasons || [], answer.fraud_probability);
}

// A bar per reason: how far the probability falls with that feature at its training mean,
// as a share of the probability itself.
function showReasons(reasons, probability) {
  const box = $("reasons");
  box.replaceChildren();
  $("reasons-title").hidden = reasons.length === 0;
  for (const reason of reasons) {
    const row = document.createElement("div");
    row.className = "reason";
    const name = document.createElement("span");
    name.className = "feature";
    name.textContent = reason.feature;
    const bar = document.createElement("span");
    bar.className = "reason-bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.min(100, (100 * reason.contribution) / Math.max(probability, 1e-9)).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "contribution";
    value.textContent = `+${reason.contribution.toFixed(3)}`;
    value.title = `value ${reason.value === null ? "missing" : reason.value}`;
    row.append(name, bar, value);
    box.append(row);
  }
}

function sparkline(svg, values) {
  const finite = values.filter((v) => Number.isFinite(v));
  const top = Math.max(1e-9, ...finite);
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const points = values.map((v, i) =>
    `${(i * step).toFixed(1)},${(30 - 28 * (Number.isFinite(v) ? v : 0) / top).toFixed(1)}`);
  svg.innerHTML = `<polyline points="${points.join(" ")}"></polyline>`;
}

const DECISIONS = ["APPROVE", "REVIEW", "DECLINE"];
const share = (x) => (x === null ? "–" : `${(100 * x).toFixed(2)} %`);
const fixed = (x, digits) => (x === null ? "–" : x.toFixed(digits));

function cell(tag, text, className = "") {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

// The model's policy and how each challenger compares with the champion on the same requests.
function showComparison(found) {
  const latency = (v) => {
    const q = found.latency[v];
    return q ? ` · p50 ${q.p50_ms.toFixed(2)} ms, p99 ${q.p99_ms.toFixed(2)} ms` : "";
  };
  const policy = found.policy;
  let text = `champion version ${found.champion}${latency(found.champion)}`;
  if (!found.applied) text += policy ? ` (policy waiting: ${found.error})` : " (newest, no policy)";
  else if (policy.canary) text += ` · canary ${policy.canary} at ${(100 * policy.share).toFixed(0)} %`;
  $("policy").textContent = text;
  $("challengers").replaceChildren(...found.challengers.map((c) => {
    const box = document.createElement("div");
    box.className = "challenger";
    box.append(cell("div", `${c.role} version ${c.version}${latency(c.version)}: ` +
      `${c.compared} compared, agreement ${share(c.agreement)}, ` +
      `PSI ${fixed(c.psi, 4)}, correlation ${fixed(c.score_correlation, 4)}` +
      (c.dropped ? `, ${c.dropped} not compared` : "") + (c.errors ? `, ${c.errors} errors` : "")));
    const table = document.createElement("table");
    const head = document.createElement("tr");
    head.append(cell("th", "champion \\ challenger"), ...DECISIONS.map((d) => cell("th", d)));
    table.append(head);
    for (const mine of DECISIONS) {
      const row = document.createElement("tr");
      row.append(cell("th", mine), ...DECISIONS.map((theirs) =>
        cell("td", String(c.decisions[`champion ${mine}`][theirs]), mine === theirs ? "agree" : "")));
      table.append(row);
    }
    box.append(table);
    return box;
  }));
  const last = found.events[found.events.length - 1];
  $("rollback").textContent = last
    ? `canary ${last.version} rolled back at ${new Date(1000 * last.time).toLocaleTimeString()}: ${last.detail}`
    : "";
  $("comparison").hidden = false;
}

async function poll() {
  if (key) {
    try {
      const points = (await api("/v1/stats")).recent;
      // Requests/s over the last ten points; latency from the last point that had traffic.
      const latest = points.slice(-10);
      if (latest.length) {
        const rps = latest.reduce((sum, p) => sum + p.rps, 0) / latest.length;
        $("rps").textContent = rps.toFixed(1);
      }
      const timed = points.filter((p) => p.p99_ms !== null).pop();
      if (timed) {
        $("p50").textContent = timed.p50_ms.toFixed(2);
        $("p99").textContent = timed.p99_ms.toFixed(2);
      }
      sparkline($("rps-line"), points.map((p) => p.rps));
      sparkline($("p99-line"), points.map((p) => p.p99_ms ?? NaN));
      if (model) {
        await api(`/v1/models/${encodeURIComponent(model.name)}/comparison`).then(
          showComparison, () => { $("comparison").hidden = true; });
      }
    } catch (error) {
      // The panel stays as it was; errors from the user's own actions are the ones shown.
    }
  }
  setTimeout(poll, 2000);
}
poll();
