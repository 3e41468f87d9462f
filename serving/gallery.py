"""A small gallery page, mounted at /ui: a seed box (and a class menu for a class-conditional champion)
and a Generate button that call the API."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganops gallery</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
 label { margin-right: 1rem; } input { width: 7rem; }
 #grid { margin-top: 1rem; image-rendering: pixelated; width: 384px; border: 1px solid #ccc; }
 #info, #error { margin-top: .5rem; font-size: .9rem; } #error { color: #b00; }
</style></head>
<body>
<h1>ganops gallery</h1>
<p id="model">loading model info...</p>
<label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
<label>images <input id="n" type="number" min="1" value="16"></label>
<label id="classbox" hidden>class <select id="label"><option value="">any</option></select></label>
<button id="generate">Generate</button>
<div id="error"></div>
<img id="grid" alt="generated samples" hidden>
<div id="info"></div>
<script>
const $ = (id) => document.getElementById(id);
async function loadModel() {
  const r = await fetch("../model", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  const m = await r.json();
  $("model").textContent = r.ok
    ? `serving ${m.name} v${m.version} (@${m.alias}), run ${m.run_id.slice(0, 8)}, ${m.image_size}px, max ${m.max_n} images`
    : "model info unavailable";
  $("n").max = m.max_n || 64;
  (m.class_counts || []).forEach((_, k) => $("label").add(new Option(String(k), String(k))));
  $("classbox").hidden = !(m.class_counts || []).length;
}
async function generate() {
  $("error").textContent = "";
  const body = {n: Number($("n").value || 16), format: "grid"};
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("label").value !== "") body.label = Number($("label").value);
  const r = await fetch("../generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
  if (!r.ok) { $("error").textContent = `error ${r.status}: ${await r.text()}`; return; }
  const url = URL.createObjectURL(await r.blob());
  $("grid").src = url; $("grid").hidden = false;
  $("info").textContent = `seed ${r.headers.get("X-Seed")}, ${body.n} images`
    + ("label" in body ? `, class ${body.label}` : "");
}
$("generate").addEventListener("click", generate);
loadModel();
</script>
</body></html>
"""


async def page(request):  # noqa: ANN001 - Starlette handler
    return HTMLResponse(PAGE)


app = Starlette(routes=[Route("/", page)])
