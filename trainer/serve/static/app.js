// trainer serve: the drawing pad, live predictions, the model card and the confusion matrix.
// Plain JS, no library, no build step; it talks to the server that sent it and to nothing else.
"use strict";

const THROTTLE_MS = 50; // at most one prediction request per 50 ms while drawing
const BRUSH = 10; // pad pixels (the pad is 140 x 140, shown at 280 x 280)

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
let classNames = [];
let strokes = []; // {kind: "line", points: [[x, y], ...]} or {kind: "image", bitmap, file}
let current = null; // the stroke being drawn
let sent = 0; // sequence number of the latest request
let shown = 0; // sequence number of the reply on screen: older replies are stale, dropped
let lastSend = 0;
let timer = null;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text; // text from the server is always text, never HTML
  return node;
}

function pct(p) { return (100 * p).toFixed(p >= 0.9995 || p < 0.001 ? 0 : 1) + "%"; }

// --- drawing ---

function redraw() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  for (const s of strokes) drawStroke(s);
}

function drawStroke(s) {
  if (s.kind === "image") {
    const scale = Math.min(pad.width / s.bitmap.width, pad.height / s.bitmap.height);
    const w = s.bitmap.width * scale, h = s.bitmap.height * scale;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(s.bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    return;
  }
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const [x0, y0] = s.points[0];
  if (s.points.length === 1) {
    ctx.beginPath();
    ctx.arc(x0, y0, BRUSH / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  for (const [x, y] of s.points.slice(1)) ctx.lineTo(x, y);
  ctx.stroke();
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
}

pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  pad.setPointerCapture(e.pointerId);
  current = { kind: "line", points: [padPoint(e)] };
  strokes.push(current);
  redraw();
  schedule();
});

pad.addEventListener("pointermove", (e) => {
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const c of events.length ? events : [e]) current.points.push(padPoint(c));
  redraw();
  schedule();
});

function endStroke() {
  if (!current) return;
  current = null;
  predictNow(); // the finished stroke always gets its answer
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => { strokes = []; redraw(); predictNow(); });
$("undo").addEventListener("click", () => { strokes.pop(); redraw(); predictNow(); });
// An opened image replaces the drawing, and the file itself goes to the server, which prepares
// it as `trainer predict` prepares the same file (letterboxed onto the black pad, a light photo
// would have black bars for a background). Drawing on it afterwards sends the pad.
$("open").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (err) {
    $("status").textContent = "cannot read that image: " + err.message;
    return;
  }
  strokes = [{ kind: "image", bitmap, file }];
  redraw();
  predictNow();
});

// --- predictions: throttled, stale replies dropped ---

function schedule() {
  const wait = lastSend + THROTTLE_MS - performance.now();
  if (wait <= 0) predictNow();
  else if (!timer) timer = setTimeout(predictNow, wait);
}

function predictNow() {
  clearTimeout(timer);
  timer = null;
  lastSend = performance.now();
  const seq = ++sent;
  pad.dataset.seq = String(seq);
  if (!strokes.length) { show(seq, null, "draw a digit"); return; }
  let request;
  if (strokes.length === 1 && strokes[0].kind === "image") {
    const form = new FormData();
    form.append("image", strokes[0].file);
    request = fetch("/api/predict/image", { method: "POST", body: form });
  } else {
    const rgba = ctx.getImageData(0, 0, pad.width, pad.height).data;
    const pixels = new Array(pad.width * pad.height);
    for (let i = 0; i < pixels.length; i++) pixels[i] = rgba[4 * i]; // gray: white on black
    request = fetch("/api/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels, width: pad.width, height: pad.height }),
    });
  }
  request
    .then(async (r) => {
      const body = await r.json();
      show(seq, r.ok ? body : null, r.ok ? "" : body.error);
    })
    .catch((err) => show(seq, null, "the server does not answer: " + err.message));
}

function show(seq, reply, message) {
  if (seq < shown) return; // a newer drawing has been answered already
  shown = seq;
  $("answer").dataset.seq = String(seq);
  $("status").textContent = message || "";
  const seen = $("seen").getContext("2d");
  $("warning").textContent = "";
  if (!reply) {
    seen.clearRect(0, 0, 28, 28);
    $("prediction").textContent = "–";
    renderBars(null);
    return;
  }
  seen.putImageData(grayImage(reply.image, 28, 28), 0, 0);
  $("prediction").textContent = reply.prediction;
  $("status").textContent = pct(reply.probabilities[reply.index]) + " sure";
  $("warning").textContent = (reply.warnings || []).join(" ");
  renderBars(reply.probabilities);
}

function grayImage(base64, w, h) { // the server sends images as base64 of their bytes
  const values = atob(base64);
  const img = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = values.charCodeAt(i);
    img.data[4 * i + 3] = 255;
  }
  return img;
}

function buildBars() {
  const list = $("bars");
  list.replaceChildren();
  classNames.forEach((name) => {
    const li = el("li");
    const track = el("span", { class: "track" });
    track.append(el("span", { class: "fill" }));
    li.append(el("span", { class: "name" }, name), track, el("span", { class: "pct" }, "–"));
    list.append(li);
  });
}

function renderBars(probabilities) {
  const items = $("bars").children;
  const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
  for (let i = 0; i < items.length; i++) {
    const p = probabilities ? probabilities[i] : 0;
    items[i].classList.toggle("winner", i === best);
    items[i].querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    items[i].querySelector(".pct").textContent = probabilities ? pct(p) : "–";
  }
}

// --- the model and its history ---

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function fmtSeconds(s) {
  if (s === null) return "–";
  return s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

function renderInfo(m) {
  const d = m.dataset;
  const rows = [
    ["network", m.network],
    ["parameters", m.parameters.toLocaleString("en")],
    ["test accuracy", m.test_accuracy === null ? "–" : pct(m.test_accuracy) +
      (d.test_samples ? ` (${d.test_samples.toLocaleString("en")} test images)` : "")],
    ["training time", fmtSeconds(m.training_seconds) +
      (m.epochs_run ? `, ${m.epochs_run} epoch${m.epochs_run === 1 ? "" : "s"}` : "")],
    ["dataset", [d.source, d.path].filter(Boolean).join(": ") +
      (d.train_samples ? ` (${d.train_samples.toLocaleString("en")} training images)` : "")],
    ["trained on", [m.trained_on.backend, m.trained_on.device, m.trained_on.dtype].filter(Boolean).join(", ")],
    ["serving on", `${m.serving_on.backend}, ${m.serving_on.device}`],
    ["input scaling", m.input_scaling.method === "unit" ? "x / 255" :
      `(x / 255 - ${m.input_scaling.mean.toFixed(4)}) / ${m.input_scaling.std.toFixed(4)}`],
    ["run", m.run],
  ];
  const dl = $("model-info");
  dl.replaceChildren();
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v || "–"));
  $("config").textContent = JSON.stringify(m.config, null, 2);
  $("summary").textContent = `${m.network}: ${m.test_accuracy === null ? "no test accuracy" :
    pct(m.test_accuracy) + " on the test set"}`;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(title, rows, series, fixed) {
  const W = 300, H = 150, L = 38, R = 8, T = 16, B = 22;
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const values = series.flatMap(([key]) => rows.map((r) => r[key]).filter((v) => v !== null));
  if (!values.length) return root;
  let lo = fixed ? Math.min(...values) : 0, hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const n = rows.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  const fmt = (v) => (fixed ? pct(v) : v.toPrecision(3));
  root.append(svg("text", { x: 2, y: T + 4 }, fmt(hi)), svg("text", { x: 2, y: H - B }, fmt(lo)));
  root.append(svg("text", { x: L, y: 10 }, title));
  root.append(svg("text", { x: W - R - 40, y: H - 6 }, `epoch ${n}`));
  let legend = L + 70; // a swatch of each line's colour, then its name
  for (const [key, color, label] of series) {
    const pts = rows.map((r, i) => (r[key] === null ? null : `${x(i)},${y(r[key])}`)).filter(Boolean);
    if (!pts.length) continue;
    root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    for (const p of pts) {
      const [cx, cy] = p.split(",");
      root.append(svg("circle", { cx, cy, r: 2, fill: color }));
    }
    if (series.length > 1) {
      root.append(svg("rect", { x: legend, y: 3, width: 12, height: 8, fill: color, class: "swatch" }));
      root.append(svg("text", { x: legend + 15, y: 10, class: "legend" }, label));
      legend += 54;
    }
  }
  return root;
}

function renderHistory(rows) {
  const box = $("history");
  box.replaceChildren();
  if (!rows.length) { box.append(el("p", { class: "muted" }, "no history recorded")); return; }
  box.append(chart("loss", rows, [["loss", "#2f6fdf", "loss"]], false));
  box.append(chart("accuracy", rows, [["train_accuracy", "#2f6fdf", "train"],
    ["val_accuracy", "#7048e8", "val"], ["test_accuracy", "#e8590c", "test"]], true));
}

// --- the confusion matrix and the images behind its cells ---

function renderConfusion(c) {
  const table = $("confusion");
  table.replaceChildren();
  $("confusion-note").textContent = c.matrix ? [c.images ? "" :
    "The test images are not available: " + c.why_no_images, c.note].filter(Boolean).join(" ") :
    "The run records no confusion matrix.";
  if (!c.matrix) return;
  const head = el("tr");
  head.append(el("th", {}, "actual \\ predicted"));
  c.class_names.forEach((n) => head.append(el("th", { scope: "col" }, n)));
  table.append(head);
  const offMax = Math.max(1, ...c.matrix.flatMap((row, a) => row.filter((_, b) => a !== b)));
  c.matrix.forEach((row, a) => {
    const tr = el("tr");
    tr.append(el("th", { scope: "row" }, c.class_names[a]));
    const total = row.reduce((s, v) => s + v, 0) || 1;
    row.forEach((count, b) => {
      const td = el("td", { "data-actual": a, "data-predicted": b }, String(count));
      const share = a === b ? count / total : count / offMax;
      td.style.background = a === b ? `rgba(47, 111, 223, ${0.08 + 0.5 * share})`
        : count ? `rgba(232, 89, 12, ${0.08 + 0.6 * share})` : "#fafbfc";
      if (a === b) td.classList.add("diag");
      if (!count) td.classList.add("zero");
      td.title = `actual ${c.class_names[a]}, predicted ${c.class_names[b]}: ${count}`;
      if (count && c.images) td.addEventListener("click", () => openCell(td, a, b));
      tr.append(td);
    });
    table.append(tr);
  });
}

async function openCell(td, a, b) {
  for (const old of document.querySelectorAll("#confusion td.picked")) old.classList.remove("picked");
  td.classList.add("picked");
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  let cell;
  try {
    cell = await getJSON(`/api/confusion/${a}/${b}?limit=100`);
  } catch (err) {
    $("cell-title").textContent = err.message;
    return;
  }
  const [na, nb] = [classNames[a], classNames[b]];
  const what = a === b ? `${na} recognised as ${na}` : `${na} taken for ${nb}`;
  const some = cell.images.length < cell.count ? `, the ${cell.images.length} most confident shown` : "";
  $("cell-title").textContent = `${what}: ${cell.count} test image${cell.count === 1 ? "" : "s"}${some}`;
  for (const item of cell.images) thumbs.append(thumb(item));
}

function thumb(item) {
  const box = el("figure", { class: "thumb" });
  box.style.margin = "0";
  const c = el("canvas", { width: 28, height: 28 });
  c.getContext("2d").putImageData(grayImage(item.image, 28, 28), 0, 0);
  const p = item.probabilities;
  const order = p.map((v, i) => i).sort((i, j) => p[j] - p[i]);
  const mini = el("div", { class: "mini", title: p.map((v, i) => `${classNames[i]}: ${pct(v)}`).join("\n") });
  p.forEach((v, i) => {
    const bar = el("span");
    bar.style.height = Math.max(1, 100 * v).toFixed(0) + "%";
    if (i === order[0]) bar.classList.add("top");
    mini.append(bar);
  });
  const caption = el("figcaption", {}, order.slice(0, 2).map((i) => `${classNames[i]} ${pct(p[i])}`).join(" · "));
  box.append(c, mini, caption, el("div", { class: "muted" }, `test #${item.index}`));
  return box;
}

// --- start ---

async function start() {
  redraw();
  try {
    const [model, history, confusion] = await Promise.all(
      [getJSON("/api/model"), getJSON("/api/history"), getJSON("/api/confusion")]);
    classNames = model.class_names;
    buildBars();
    renderInfo(model);
    renderHistory(history);
    renderConfusion(confusion);
    document.body.dataset.ready = "true";
  } catch (err) {
    $("summary").textContent = "cannot load the model's information: " + err.message;
  }
}
start();
