"""A self-contained interactive 3D view of reciprocal-lattice points, as one HTML file.

The page needs no network and no library: the points are embedded as JSON in a
``<script type="application/json" id="lattice-data">`` element and drawn by a small inline
canvas-2D renderer (orthographic projection; drag to rotate, wheel to zoom, shift-drag to pan).
Buttons look down the rotation axis or along the beam; a checkbox shows the reciprocal cell
axes a*, b*, c* of crystals; points are coloured by experiment or as indexed/unindexed.

The embedded document (``lattice_data``):

- ``xyz``: flat list x0, y0, z0, x1, … (Å⁻¹, φ = 0 frame of each experiment's goniometer);
- ``experiment_id``: one per point; ``indexed``: one 0/1 per point, or null without Miller indices;
- ``experiments``: per experiment ``rotation_axis`` and ``beam`` (unit vectors in the same frame;
  the beam at the middle of the scan), ``reciprocal_axes`` (a*, b*, c*) or null, ``n_points``;
- ``invert_rotation_axis``, ``title``.
"""
from __future__ import annotations

import json

DATA_ELEMENT_ID = "lattice-data"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; background: #111; color: #ddd; font: 13px sans-serif; overflow: hidden; }
  #panel { position: absolute; top: 8px; left: 8px; background: rgba(30,30,30,0.85); padding: 8px 10px;
           border-radius: 4px; max-width: 330px; }
  #panel button { margin: 2px 2px 2px 0; }
  #legend div { margin: 1px 0; }
  #legend span { display: inline-block; width: 10px; height: 10px; margin-right: 6px; }
  canvas { display: block; cursor: grab; }
</style>
</head>
<body>
<canvas id="view"></canvas>
<div id="panel">
  <div><b>__TITLE__</b></div>
  <div id="info"></div>
  <div>
    <button id="down-axis" type="button">Look down rotation axis</button>
    <button id="along-beam" type="button">Look along beam</button>
    <button id="reset" type="button">Reset</button>
  </div>
  <div>
    <label><input id="show-cell" type="checkbox"> reciprocal cell axes a*, b*, c*</label><br>
    <label><input id="show-axis" type="checkbox" checked> rotation axis</label><br>
    <label>colour by <select id="colour-by"><option value="experiment">experiment</option>
      <option value="indexed">indexed / unindexed</option></select></label><br>
    <label>point size <input id="point-size" type="range" min="1" max="6" value="2"></label>
  </div>
  <div id="legend"></div>
  <div style="margin-top:4px;color:#999">drag: rotate &middot; shift-drag: pan &middot; wheel: zoom</div>
</div>
<script type="application/json" id="__DATA_ID__">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("__DATA_ID__").textContent);
  const canvas = document.getElementById("view");
  const context = canvas.getContext("2d");
  const n = data.experiment_id.length;
  const palette = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292",
                   "#a1887f", "#90a4ae", "#dce775", "#7986cb"];
  const indexedColours = ["#888888", "#ffeb3b"];
  let extent = 0;
  for (let i = 0; i < 3 * n; i++) extent = Math.max(extent, Math.abs(data.xyz[i]));
  extent = extent || 1;

  // camera: rows of the rotation taking the data frame to screen (x right, y up, z to the viewer)
  let rotation = [[1, 0, 0], [0, 1, 0], [0, 0, 1]];
  let zoom = 1, panX = 0, panY = 0;

  function unit(v) { const l = Math.hypot(v[0], v[1], v[2]) || 1; return [v[0] / l, v[1] / l, v[2] / l]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function multiply(a, b) {
    const out = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
    for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 3; k++) out[i][j] += a[i][k] * b[k][j];
    return out;
  }
  function axisRotation(axis, angle) {
    const [x, y, z] = unit(axis), c = Math.cos(angle), s = Math.sin(angle), t = 1 - c;
    return [[c + x * x * t, x * y * t - z * s, x * z * t + y * s],
            [y * x * t + z * s, c + y * y * t, y * z * t - x * s],
            [z * x * t - y * s, z * y * t + x * s, c + z * z * t]];
  }
  // look along `direction` (it points into the screen)
  function lookAlong(direction) {
    const back = unit(direction).map(v => -v);
    let hint = Math.abs(back[1]) < 0.9 ? [0, 1, 0] : [1, 0, 0];
    const right = unit(cross(hint, back));
    const up = cross(back, right);
    rotation = [right, up, back];
    panX = panY = 0;
    draw();
  }

  function resize() {
    canvas.width = window.innerWidth * (window.devicePixelRatio || 1);
    canvas.height = window.innerHeight * (window.devicePixelRatio || 1);
    canvas.style.width = window.innerWidth + "px";
    canvas.style.height = window.innerHeight + "px";
    draw();
  }

  function project(p) {
    const scale = zoom * 0.45 * Math.min(canvas.width, canvas.height) / extent;
    const r = rotation;
    const x = r[0][0] * p[0] + r[0][1] * p[1] + r[0][2] * p[2];
    const y = r[1][0] * p[0] + r[1][1] * p[1] + r[1][2] * p[2];
    const z = r[2][0] * p[0] + r[2][1] * p[1] + r[2][2] * p[2];
    return [canvas.width / 2 + panX + scale * x, canvas.height / 2 + panY - scale * y, z];
  }

  function colourOf(i) {
    const by = document.getElementById("colour-by").value;
    if (by === "indexed" && data.indexed) return indexedColours[data.indexed[i]];
    return palette[data.experiment_id[i] % palette.length];
  }

  function drawVector(v, colour, label, through) {
    const start = project(through ? v.map(c => -c) : [0, 0, 0]), end = project(v);
    context.strokeStyle = colour;
    context.lineWidth = 2 * (window.devicePixelRatio || 1);
    context.beginPath();
    context.moveTo(start[0], start[1]);
    context.lineTo(end[0], end[1]);
    context.stroke();
    context.fillStyle = colour;
    context.fillText(label, end[0] + 4, end[1] - 4);
  }

  function draw() {
    context.fillStyle = "#111";
    context.fillRect(0, 0, canvas.width, canvas.height);
    const size = Number(document.getElementById("point-size").value) * (window.devicePixelRatio || 1);
    // far points first, so that near ones are drawn over them
    const order = new Array(n), depth = new Float64Array(n), screen = new Float64Array(2 * n);
    for (let i = 0; i < n; i++) {
      const q = project([data.xyz[3 * i], data.xyz[3 * i + 1], data.xyz[3 * i + 2]]);
      screen[2 * i] = q[0]; screen[2 * i + 1] = q[1]; depth[i] = q[2]; order[i] = i;
    }
    order.sort((a, b) => depth[a] - depth[b]);
    for (const i of order) {
      context.fillStyle = colourOf(i);
      context.fillRect(screen[2 * i] - size / 2, screen[2 * i + 1] - size / 2, size, size);
    }
    context.font = (13 * (window.devicePixelRatio || 1)) + "px sans-serif";
    if (document.getElementById("show-axis").checked && data.experiments.length) {
      drawVector(data.experiments[0].rotation_axis.map(c => c * extent), "#ff00ff", "rotation axis", true);
    }
    if (document.getElementById("show-cell").checked) {
      for (const e of data.experiments) {
        if (!e.reciprocal_axes) continue;
        const names = ["a*", "b*", "c*"], colours = ["#ff5252", "#69f0ae", "#448aff"];
        e.reciprocal_axes.forEach((v, k) => drawVector(v, colours[k], names[k], false));
      }
    }
  }

  function legend() {
    const by = document.getElementById("colour-by").value;
    const rows = [];
    if (by === "indexed" && data.indexed) {
      const count = data.indexed.reduce((s, v) => s + v, 0);
      rows.push([indexedColours[1], "indexed (" + count + ")"], [indexedColours[0], "unindexed (" + (n - count) + ")"]);
    } else {
      data.experiments.forEach((e, k) => rows.push([palette[k % palette.length], "experiment " + k + " (" + e.n_points + ")"]));
    }
    const box = document.getElementById("legend");
    box.textContent = "";
    for (const [colour, text] of rows) {
      const row = document.createElement("div"), swatch = document.createElement("span");
      swatch.style.background = colour;
      row.appendChild(swatch);
      row.appendChild(document.createTextNode(text));
      box.appendChild(row);
    }
  }

  let dragging = null;
  canvas.addEventListener("mousedown", event => { dragging = [event.clientX, event.clientY, event.shiftKey]; canvas.style.cursor = "grabbing"; });
  window.addEventListener("mouseup", () => { dragging = null; canvas.style.cursor = "grab"; });
  window.addEventListener("mousemove", event => {
    if (!dragging) return;
    const dx = event.clientX - dragging[0], dy = event.clientY - dragging[1];
    if (dragging[2]) {
      const ratio = window.devicePixelRatio || 1;
      panX += dx * ratio; panY += dy * ratio;
    } else {
      // screen-space trackball: horizontal drags turn about the screen's y, vertical about its x
      rotation = multiply(multiply(axisRotation([0, 1, 0], dx * 0.01), axisRotation([1, 0, 0], dy * 0.01)), rotation);
    }
    dragging = [event.clientX, event.clientY, dragging[2]];
    draw();
  });
  canvas.addEventListener("wheel", event => { event.preventDefault(); zoom *= Math.exp(-event.deltaY * 0.001); draw(); }, { passive: false });
  document.getElementById("down-axis").addEventListener("click", () => lookAlong(data.experiments[0].rotation_axis));
  document.getElementById("along-beam").addEventListener("click", () => lookAlong(data.experiments[0].beam));
  document.getElementById("reset").addEventListener("click", () => { rotation = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]; zoom = 1; panX = panY = 0; draw(); });
  for (const id of ["show-cell", "show-axis", "point-size"]) document.getElementById(id).addEventListener("input", draw);
  document.getElementById("colour-by").addEventListener("input", () => { legend(); draw(); });
  if (!data.indexed) document.getElementById("colour-by").disabled = true;
  if (!data.experiments.some(e => e.reciprocal_axes)) document.getElementById("show-cell").disabled = true;
  document.getElementById("info").textContent = n + " reciprocal-lattice points" +
    (data.invert_rotation_axis ? " (rotation axis inverted)" : "");
  window.addEventListener("resize", resize);
  legend();
  resize();
})();
</script>
</body>
</html>
"""


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def lattice_page_html(data: dict) -> str:
    """The page for the document ``data`` (see the module docstring); ``data["title"]`` is its title."""
    # "</" inside the JSON would end the script element; JSON allows the escaped form "<\\/"
    embedded = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (_PAGE.replace("__TITLE__", _escape_html(str(data.get("title", "reciprocal lattice"))))
            .replace("__DATA_ID__", DATA_ELEMENT_ID)
            .replace("__DATA__", embedded))
