"""The page served at ``/``: drop images, see each one's decision, scores and overlay.

Plain HTML and JavaScript in one string, with nothing fetched from elsewhere (the service runs on
machines without internet access). Data from the service and file names are written with
``textContent``, never as HTML. Every failure the page can meet (a refused upload, the service gone)
is shown in the page and never thrown, so the browser console stays clean.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>stratad</title>
<style>
  :root { --good: #1e8c3c; --bad: #c81e1e; --none: #5a5a5a; --line: #c8ccd2; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.2em;
         color: #1c1f24; }
  h1 { font-size: 1.35em; margin: 0 0 .2em; }
  #model { color: #555; margin-bottom: 1em; min-height: 1.4em; }
  #drop { display: block; border: 2px dashed var(--line); border-radius: 10px; padding: 2.2em 1em;
          text-align: center; cursor: pointer; background: #f7f8fa; }
  #drop.over { border-color: #3b6fd8; background: #eef3fd; }
  #drop input { display: block; margin: .8em auto 0; }
  #options { margin: .6em 0; color: #444; }
  #status { margin: .8em 0; min-height: 1.4em; color: #444; }
  #error { display: none; margin: .8em 0; padding: .7em 1em; border-radius: 6px; background: #fdecec;
           color: #8a1111; border: 1px solid #f3b7b7; }
  #error.shown { display: block; }
  .result { border: 1px solid var(--line); border-radius: 10px; padding: .9em; margin: 1em 0; }
  .result h2 { font-size: 1.05em; margin: 0 0 .5em; word-break: break-all; }
  .decision { display: inline-block; padding: .1em .6em; border-radius: 4px; color: #fff;
              font-weight: 600; letter-spacing: .03em; }
  .decision.good { background: var(--good); } .decision.defective { background: var(--bad); }
  .decision.none { background: var(--none); }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; margin: .6em 0; }
  dt { color: #555; } dd { margin: 0; font-variant-numeric: tabular-nums; }
  img.overlay { max-width: 100%; height: auto; display: block; margin-top: .5em;
                image-rendering: auto; border-radius: 4px; }
</style>
</head>
<body>
<h1>stratad &mdash; anomaly detection</h1>
<div id="model">loading the model description&hellip;</div>
<label id="drop" for="files">
  Drop images here, or choose files
  <input id="files" type="file" multiple accept="image/*,.tif,.tiff">
</label>
<div id="options"><label><input id="show-overlay" type="checkbox" checked> draw overlays</label></div>
<div id="status" role="status"></div>
<div id="error" role="alert"></div>
<div id="results"></div>
<script>
"use strict";
const el = (id) => document.getElementById(id);
let maxFiles = null;
let maxBytes = null;

function showError(text) {
  const box = el("error");
  box.textContent = text;
  box.classList.toggle("shown", Boolean(text));
}

function fmt(value, digits) {
  return value === null || value === undefined ? "\\u2014" : Number(value).toPrecision(digits);
}

async function readJson(response) {
  try { return await response.json(); } catch (err) { return null; }
}

async function describeModel() {
  try {
    const response = await fetch("model");
    const info = await readJson(response);
    if (!response.ok || !info) { el("model").textContent = "model description unavailable"; return; }
    maxFiles = info.limits ? info.limits.max_files : null;
    maxBytes = info.limits ? info.limits.max_upload_mb * 1048576 : null;
    const parts = [info.backbone, (info.nodes || []).join(" + "), info.detector,
                   info.image_size ? info.image_size + " px" : null].filter(Boolean);
    const t = info.thresholds;
    parts.push(t ? "image threshold " + fmt(t.image_threshold, 4) : "no thresholds (uncalibrated)");
    parts.push("stratad " + info.stratad_version);
    el("model").textContent = parts.join(" \\u00b7 ");
  } catch (err) {
    el("model").textContent = "cannot reach the service";
  }
}

function row(list, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.field = label;
  list.append(dt, dd);
}

function render(result, file) {
  const card = document.createElement("section");
  card.className = "result";
  const title = document.createElement("h2");
  title.textContent = result.name + " (" + result.width + " \\u00d7 " + result.height + ")";
  const decision = document.createElement("span");
  const verdict = result.decision || "no decision";
  decision.className = "decision " + (result.decision || "none");
  decision.textContent = verdict;
  const list = document.createElement("dl");
  row(list, "score", fmt(result.score, 6));
  row(list, "normalised score", fmt(result.normalized_score, 3));
  row(list, "defect area", result.defect_area === null ? "\\u2014"
      : (100 * result.defect_area).toFixed(2) + " % (" + result.defect_pixels + " px)");
  card.append(title, decision, list);
  const img = document.createElement("img");
  img.className = "overlay";
  img.alt = "overlay of " + result.name;
  if (result.overlay_jpg) {
    img.src = "data:image/jpeg;base64," + result.overlay_jpg;
  } else if (file) {
    img.src = URL.createObjectURL(file);  // no map (or overlays off): the image itself
    img.className = "source";
  }
  if (img.src) { card.append(img); }
  return card;
}

async function score(files) {
  files = Array.from(files || []);
  if (!files.length) { return; }
  showError("");
  if (maxFiles !== null && files.length > maxFiles) {
    showError("at most " + maxFiles + " images per upload; " + files.length + " were chosen");
    return;
  }
  // The service refuses these too; said here first, without a request the browser would log as failed.
  for (const file of files) {
    if (file.size === 0) { showError(file.name + " is empty (0 bytes)"); return; }
    if (maxBytes !== null && file.size > maxBytes) {
      showError(file.name + " is " + (file.size / 1048576).toPrecision(3) + " MB; the limit is " +
                (maxBytes / 1048576).toPrecision(3) + " MB per image");
      return;
    }
  }
  const body = new FormData();
  for (const file of files) { body.append("files", file, file.name); }
  const overlay = el("show-overlay").checked ? "true" : "false";
  el("status").textContent = "scoring " + files.length + " image" + (files.length > 1 ? "s" : "") + "\\u2026";
  let response;
  try {
    response = await fetch("predict?overlay=" + overlay, { method: "POST", body });
  } catch (err) {
    el("status").textContent = "";
    showError("cannot reach the service: is `stratad serve` still running?");
    return;
  }
  const answer = await readJson(response);
  if (!response.ok || !answer) {
    el("status").textContent = "";
    const detail = answer && typeof answer.detail === "string" ? answer.detail : response.statusText;
    showError("refused (" + response.status + "): " + detail);
    return;
  }
  const results = el("results");
  results.replaceChildren(...answer.results.map((r, i) => render(r, files[i])));
  el("status").textContent = "scored " + answer.results.length + " image" +
      (answer.results.length > 1 ? "s" : "") + " in " + answer.seconds.toFixed(2) + " s";
}

const drop = el("drop");
el("files").addEventListener("change", (event) => { score(event.target.files); event.target.value = ""; });
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  score(event.dataTransfer.files);
});
describeModel();
</script>
</body>
</html>
"""
