// The review page: send each chosen file to POST /v1/predict, show its probability, label and
// Grad-CAM overlay in a sortable table. Plain browser JavaScript, no build step, no external assets.
"use strict";

const state = { model: null, rows: [], sortKey: null, sortUp: true, pending: 0 };
const $ = (selector) => document.querySelector(selector);

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

async function loadModel() {
  const response = await fetch("/v1/model");
  const facts = await response.json();
  state.model = facts;
  const identity = facts.identity;
  const metrics = Object.entries(facts.metrics || {})
    .filter(([, m]) => typeof m.auc === "number")
    .map(([split, m]) => `${split} AUC ${m.auc.toFixed(3)}`);
  // More than two classes: no threshold, the label is the most probable class.
  const rule = identity.threshold === null
    ? `label: the most probable of ${identity.class_names.join(", ")}`
    : `label PNEUMONIA when P >= ${identity.threshold.toFixed(4)} (${identity.threshold_rule})`;
  $("#model").textContent =
    `${facts.model.variant}, step ${facts.model.checkpoint_step}; ${rule}` +
    (metrics.length ? `; ${metrics.join(", ")}` : "") +
    `; model.json ${identity.model_json_sha256.slice(0, 12)}`;
  $("#intended-use").textContent = "Intended use: " + facts.intended_use.replace(/\*\*/g, "");
}

function render() {
  const body = $("#results tbody");
  body.replaceChildren();
  const rows = state.rows.slice();
  if (state.sortKey) {
    const sign = state.sortUp ? 1 : -1;
    rows.sort((a, b) => {
      const x = a[state.sortKey], y = b[state.sortKey];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.file = row.file;
    tr.append(text("td", row.file, "file"));
    if (row.error) {
      const cell = text("td", row.error, "error");
      cell.colSpan = 3;
      tr.append(cell);
    } else if (row.prob === null) {
      const cell = text("td", "scoring...", "pending");
      cell.colSpan = 3;
      tr.append(cell);
    } else {
      tr.append(text("td", row.prob.toFixed(4), "prob"));
      tr.append(text("td", row.label, "label " + row.label));
      const cell = document.createElement("td");
      if (row.gradcam) {
        const image = document.createElement("img");
        image.className = "gradcam";
        image.alt = `Grad-CAM overlay of ${row.file}`;
        image.src = row.gradcam;
        cell.append(image);
      }
      tr.append(cell);
    }
    body.append(tr);
  }
  $("#results").hidden = state.rows.length === 0;
  const done = state.rows.filter((r) => r.prob !== null || r.error).length;
  $("#status").textContent = state.rows.length ? `${done} of ${state.rows.length} file(s) done` : "";
}

async function score(file, row) {
  const form = new FormData();
  form.append("file", file, file.name);
  const gradcam = state.model && state.model.gradcam ? "?gradcam=true" : "";
  try {
    const response = await fetch("/v1/predict" + gradcam, { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) {
      row.error = `${response.status}: ${answer.error || answer.detail || response.statusText}`;
    } else {
      const record = answer.records[0];
      // P(PNEUMONIA), or past two classes the probability of the label (the most probable class).
      const prob = record.probs ? record.probs[record.label] : record.prob_pneumonia;
      Object.assign(row, { prob, label: record.label, gradcam: record.gradcam || null });
    }
  } catch (error) {
    row.error = `not answered (${error})`;
  }
  render();
}

function add(files) {
  const jobs = [];
  for (const file of files) {
    const row = { file: file.name, prob: null, label: null, gradcam: null, error: null };
    state.rows.push(row);
    jobs.push(score(file, row));
  }
  render();
  return Promise.all(jobs);
}

function setUp() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (event) => {
    add(event.target.files);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    add(event.dataTransfer.files);
  });
  for (const th of document.querySelectorAll("th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.sortUp = state.sortKey === key ? !state.sortUp : key !== "prob";
      state.sortKey = key;
      render();
    });
  }
  loadModel().catch((error) => {
    $("#model").textContent = `Cannot describe the model (${error}).`;
  });
}

setUp();
