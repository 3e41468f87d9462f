"""The gallery page, mounted at /ui: what is served and how good it is, samples, and style transfer.

On load it asks POST /model and shows the champion (version, data hash, metrics next to their real-vs-real
baselines), draws a grid at once, and lists every registered version with its metrics. A seed box and a
class menu (class-conditional champions) redraw; an upload form sends a photo to POST /stylize with one of
the registered styles. Everything from the server is put in the page as text (never as HTML).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganops gallery</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }
 label { margin-right: 1rem; } input[type=number] { width: 7rem; }
 img.out { margin-top: 1rem; image-rendering: pixelated; width: 384px; border: 1px solid #ccc; }
 #styled { image-rendering: auto; }
 .note, .error { margin-top: .5rem; font-size: .9rem; } .error { color: #b00; }
 table { border-collapse: collapse; font-size: .9rem; } td, th { padding: .2rem .6rem; text-align: left; }
 tr.champion { font-weight: bold; } th { border-bottom: 1px solid #ccc; }
 section { margin-top: 2rem; }
</style></head>
<body>
<h1>ganops gallery</h1>
<p id="model">loading model info...</p>
<table id="metrics" hidden><thead><tr><th>metric</th><th>champion</th><th>real vs real</th></tr></thead>
<tbody></tbody></table>

<section><h2>Samples</h2>
<label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
<label>images <input id="n" type="number" min="1" value="16"></label>
<label id="classbox" hidden>class <select id="label"><option value="">any</option></select></label>
<button id="generate">Generate</button>
<div id="error" class="error"></div>
<img id="grid" class="out" alt="generated samples" hidden>
<div id="info" class="note"></div></section>

<section id="stylebox"><h2>Style a photo</h2>
<form id="styleform">
<input id="photo" name="image" type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp" required>
<label>style <select id="style" name="style"></select></label>
<button id="stylize" type="submit">Stylize</button>
</form>
<div id="styleerror" class="error"></div>
<img id="styled" class="out" alt="stylized photo" hidden></section>

<section><h2>Registered versions</h2>
<table id="versions"><thead><tr><th>version</th><th>run</th><th>data</th><th>metrics</th></tr></thead>
<tbody></tbody></table></section>
<script>
const $ = (id) => document.getElementById(id);
const fmt = (x) => (typeof x === "number" ? Number(x.toPrecision(4)) : x);
function row(table, cells, cls) {
  const tr = $(table).tBodies[0].insertRow();
  if (cls) tr.className = cls;
  cells.forEach((c) => { tr.insertCell().textContent = c; });
}
async function loadModel() {
  const r = await fetch("../model", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  if (!r.ok) { $("model").textContent = `model info unavailable (${r.status})`; return; }
  const m = await r.json();
  $("model").textContent = `serving ${m.name} v${m.version} (@${m.alias}), run ${String(m.run_id).slice(0, 8)}, `
    + `data ${String(m.dataset_hash).slice(0, 12)}, ${m.image_size}px, max ${m.max_n} images`;
  $("n").max = m.max_n;
  (m.class_counts || []).forEach((_, k) => $("label").add(new Option(String(k), String(k))));
  $("classbox").hidden = !(m.class_counts || []).length;
  // each metric next to its real-vs-real baseline (two halves of the real data: the best reachable)
  for (const k of Object.keys(m.metrics).sort()) {
    if (k.startsWith("baseline_")) continue;
    // evaluate names them baseline_<k>, or baseline_fid / baseline_kid for domain_fid / domain_kid
    const base = m.metrics["baseline_" + k] ?? m.metrics["baseline_" + k.replace(/^domain_/, "")];
    row("metrics", [k, fmt(m.metrics[k]), base === undefined ? "-" : fmt(base)]);
  }
  $("metrics").hidden = false;
  m.styles.forEach((s) => $("style").add(new Option(s, s)));
  $("stylebox").hidden = !m.styles.length;
  m.versions.forEach((v) => row("versions", [
    `v${v.version}` + (v.version === m.version ? " (champion)" : ""), String(v.run_id).slice(0, 8),
    String(v.dataset_hash).slice(0, 12),
    Object.keys(v.metrics).sort().map((k) => `${k} ${fmt(v.metrics[k])}`).join(", ")],
    v.version === m.version ? "champion" : ""));
}
async function generate() {
  $("error").textContent = "";
  const body = {n: Number($("n").value || 16), format: "grid"};
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("label").value !== "") body.label = Number($("label").value);
  const r = await fetch("../generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
  if (!r.ok) { $("error").textContent = `error ${r.status}: ${await r.text()}`; return; }
  $("grid").src = URL.createObjectURL(await r.blob()); $("grid").hidden = false;
  $("info").textContent = `seed ${r.headers.get("X-Seed")}, ${body.n} images`
    + ("label" in body ? `, class ${body.label}` : "") + `, model v${r.headers.get("X-Model-Version")}`;
}
async function stylize(event) {
  event.preventDefault();
  $("styleerror").textContent = "";
  const r = await fetch("../stylize", {method: "POST", body: new FormData($("styleform"))});
  if (!r.ok) { $("styleerror").textContent = `error ${r.status}: ${await r.text()}`; return; }
  $("styled").src = URL.createObjectURL(await r.blob()); $("styled").hidden = false;
}
$("generate").addEventListener("click", generate);
$("styleform").addEventListener("submit", stylize);
loadModel().then(generate);  // a grid on first load
</script>
</body></html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


app = Starlette(routes=[Route("/", page)])
