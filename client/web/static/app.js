// The page: pick, drop or paste a mark, optionally drag a box over the part to search,
// and see the verdict and the ranked matches. Talks to the app's JSON API only.
"use strict";

const $ = (id) => document.getElementById(id);
// textRead: the words box holds what the server read (not what the user typed), so
// it is sent as the caller's words only once the user has changed it.
const state = { file: null, region: null, url: null, marks: [], textRead: "" };

function fmt(x) { return Number(x).toFixed(4); }

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    const info = await r.json();
    if (!r.ok) throw new Error(info.detail || r.statusText);
    $("index-info").textContent = `${Number(info.count).toLocaleString()} registered marks, ` +
      `index ${info.index_version || "?"}, default threshold ${fmt(info.threshold)}`;
    if (info.max_k) $("k").max = info.max_k;
    showFilters(info.filterable_columns || []);
  } catch (e) {
    $("index-info").textContent = `The search server cannot be reached: ${e.message}`;
  }
}

function showFilters(columns) {
  const box = $("filters");
  for (const column of columns) {
    const label = document.createElement("label");
    label.textContent = `${column} is one of `;
    const input = document.createElement("input");
    input.type = "text";
    input.dataset.column = column;
    input.id = `filter-${column}`;
    label.append(input);
    box.append(label);
  }
  box.hidden = columns.length === 0;
}

function setImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name || "That file"} is not an image.`);
    return;
  }
  state.file = file;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  $("preview").src = state.url;
  $("stage").hidden = false;
  $("search").disabled = false;
  if ($("text").value === state.textRead) { $("text").value = ""; state.textRead = ""; }
  clearRegion();
  clearMarks();
  showError("");
}

function clearMarks() {
  state.marks = [];
  $("mark-boxes").replaceChildren();
  $("marks").hidden = true;
}

function clearRegion() {
  state.region = null;
  $("box").hidden = true;
  $("clear-crop").disabled = true;
  $("region-text").textContent = "Searching the whole image.";
}

function setupPicker() {
  const drop = $("drop");
  $("image").addEventListener("change", (e) => setImage(e.target.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image").click(); }
  });
  drop.addEventListener("click", (e) => { if (e.target === drop) $("image").click(); });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); setImage(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile());
  });
}

// The crop box is drawn in screen pixels and sent in the image's own pixels.
function setupCrop() {
  const frame = $("frame"), box = $("box"), img = $("preview");
  let start = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    return { x: Math.min(Math.max(e.clientX - r.left, 0), r.width),
             y: Math.min(Math.max(e.clientY - r.top, 0), r.height) };
  };
  frame.addEventListener("pointerdown", (e) => {
    e.preventDefault();  // no native image drag, which would cancel the pointer
    start = at(e);
    frame.setPointerCapture(e.pointerId);
  });
  frame.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = at(e);
    Object.assign(box.style, { left: `${Math.min(start.x, p.x)}px`, top: `${Math.min(start.y, p.y)}px`,
      width: `${Math.abs(p.x - start.x)}px`, height: `${Math.abs(p.y - start.y)}px` });
    box.hidden = false;
  });
  frame.addEventListener("pointerup", (e) => {
    if (!start) return;
    const p = at(e), s = start;
    start = null;
    const w = Math.abs(p.x - s.x), h = Math.abs(p.y - s.y);
    if (w < 4 || h < 4) { clearRegion(); return; }  // a click, not a box
    const scale = img.naturalWidth / img.clientWidth;
    state.region = [Math.min(s.x, p.x), Math.min(s.y, p.y), w, h].map((v) => Math.round(v * scale));
    const [x, y, rw, rh] = state.region;
    $("region-text").textContent = `Searching the box ${rw} × ${rh} px at (${x}, ${y}).`;
    $("clear-crop").disabled = false;
  });
  $("clear-crop").addEventListener("click", clearRegion);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function typedText() {
  const text = $("text").value.trim();
  return text && text !== state.textRead ? text : "";
}

async function search(e) {
  e.preventDefault();
  const text = typedText();
  if (!state.file && !text) return;
  const form = new FormData();
  if (state.file) form.append("image", state.file, state.file.name || "pasted.png");
  // The page always shows the words of the picture, so it asks for them.
  if (text) form.append("text", text); else form.append("read_words", "true");
  form.append("k", $("k").value || "10");
  if ($("threshold").value !== "") form.append("threshold", $("threshold").value);
  if (state.region) form.append("region", state.region.join(","));
  for (const input of $("filters").querySelectorAll("input[data-column]")) {
    if (input.value.trim()) form.append("filter", `${input.dataset.column}=${input.value.trim()}`);
  }
  $("search").disabled = true;
  $("search").textContent = "Searching…";
  try {
    const r = await fetch("/api/search", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    showError("");
    render(body);
  } catch (err) {
    $("verdict").hidden = true;
    $("matches").replaceChildren();
    showError(`Search failed: ${err.message}`);
  } finally {
    $("search").disabled = false;
    $("search").textContent = "Search";
  }
}

function render(res) {
  const verdict = $("verdict");
  verdict.hidden = false;
  verdict.className = res.exists ? "exists" : "absent";
  $("verdict-text").textContent = res.exists
    ? `Trade Mark Existed! - serial number: ${res.matched_serial}`
    : "Trade Mark Not Existed!";
  const byWords = res.matched_by === "words";
  $("verdict-detail").textContent = (byWords
    ? `its words match a registered mark's: ${fmt(res.words_score)} against the words' ` +
      `threshold ${fmt(res.words_threshold)}; picture confidence ${fmt(res.confidence)}`
    : res.matched_by === "keypoints"
    ? `its keypoints line up with the registered mark's under one perspective; picture ` +
      `confidence ${fmt(res.confidence)} against the threshold ${fmt(res.threshold)}`
    : res.matched_by === "figure"
    ? `its figure alone, the words beside it left out: confidence ${fmt(res.confidence)} ` +
      `against the threshold ${fmt(res.threshold)}`
    : `confidence ${fmt(res.confidence)} against the threshold ` +
      `${fmt(res.threshold)}; top similarity ${fmt(res.top_score)}`) +
    (res.words && !byWords ? `; words "${res.words}" match at best ${fmt(res.words_score)}` : "") +
    (res.filtered ? `; among the ${res.candidates} registered marks that pass the filters` : "");
  showWords(res);
  const list = $("matches");
  list.replaceChildren(...res.matches.map((m, i) => matchItem(m, i, res)));
  renderMarks(res);
}

// The words read in the picture fill the words box (unless the user typed there), to be
// corrected and searched again.
function showWords(res) {
  if (typedText()) {
    state.textRead = "";
    $("text-help").textContent = "Searched with the words you typed.";
    return;
  }
  $("text").value = res.words || "";
  state.textRead = $("text").value;
  $("text-help").textContent = state.textRead
    ? "Words read in the picture: correct them and search again."
    : "No words read in the picture; type the mark's words to search by them.";
}

// Marks the detector found in a photograph: boxed on the picture, listed, and each
// one's matches shown when it is picked (the first, most confident, to start with).
// A clean image or a region is one mark: the verdict above is its answer.
function renderMarks(res) {
  const found = (res.marks || []).filter((m) => m.detection_score !== null);
  const boxes = $("mark-boxes"), list = $("mark-list");
  state.marks = found;
  boxes.replaceChildren();
  list.replaceChildren();
  $("marks").hidden = !found.length && !(res.marks && res.marks.length === 0);
  $("marks-text").textContent = found.length
    ? `${found.length} mark${found.length > 1 ? "s" : ""} found in the picture; pick one to see its matches.`
    : "No mark found in the picture: the whole picture was searched.";
  found.forEach((mark, n) => {
    const div = document.createElement("div");
    div.className = "mark-box " + (mark.exists ? "exists" : "absent");
    div.dataset.mark = String(n + 1);
    div.textContent = String(n + 1);
    boxes.append(div);
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "mark-pick " + (mark.exists ? "exists" : "absent");
    b.dataset.mark = String(n + 1);
    const [x, y, w, h] = mark.box;
    const by = { words: " by its words", keypoints: " by its keypoints",
      figure: " by its figure" }[mark.matched_by] || "";
    b.textContent = `Mark ${n + 1}: ` + (mark.exists ? `exists${by}, ${mark.matched_serial}` : "not registered") +
      ` (confidence ${fmt(mark.confidence)}; ${w} × ${h} px at (${x}, ${y}))`;
    b.addEventListener("click", () => pickMark(n));
    li.append(b);
    list.append(li);
  });
  placeMarkBoxes();
  if (found.length) pickMark(0);
}

function placeMarkBoxes() {
  const img = $("preview");
  if (!img.naturalWidth) return;
  const scale = img.clientWidth / img.naturalWidth;
  (state.marks || []).forEach((mark, n) => {
    const div = $("mark-boxes").children[n];
    const [x, y, w, h] = mark.box.map((v) => v * scale);
    Object.assign(div.style, { left: `${x}px`, top: `${y}px`, width: `${w}px`, height: `${h}px` });
  });
}

function pickMark(n) {
  const mark = state.marks[n];
  for (const el of document.querySelectorAll(".mark-pick, .mark-box")) {
    el.classList.toggle("picked", el.dataset.mark === String(n + 1));
  }
  $("matches").replaceChildren(...mark.matches.map((m, i) => matchItem(m, i, mark)));
}

function matchItem(m, i, res) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "match" + (res.exists && i === 0 ? " accepted" : "");
  b.dataset.serial = m.serial;
  const img = document.createElement("img");
  img.src = `/api/thumbnails/${encodeURIComponent(m.serial)}`;
  img.alt = `Registered mark ${m.serial}`;
  img.loading = "lazy";
  const serial = document.createElement("div");
  serial.className = "serial";
  serial.textContent = `${i + 1}. ${m.serial}`;
  const name = document.createElement("div");
  name.textContent = m.name || "";
  const score = document.createElement("div");
  score.textContent = m.score ? `similarity ${fmt(m.score)}` : "found by its words";
  b.append(img, serial, name, score);
  if (m.text) {
    const words = document.createElement("div");
    words.className = "words";
    words.textContent = `words “${m.text}”` + (m.text_score ? ` · match ${fmt(m.text_score)}` : "");
    b.append(words);
  }
  const meta = Object.entries(m.metadata || {}).filter(([k]) => k !== "name");
  if (meta.length) {
    const line = document.createElement("div");
    line.className = "meta";
    line.textContent = meta.map(([k, v]) => `${k}: ${v}`).join(" · ");
    b.append(line);
  }
  if (m.same_mark && i > 0) {
    const tag = document.createElement("div");
    tag.className = "tag";
    tag.textContent = "a rendition of the top match";
    b.append(tag);
  }
  b.setAttribute("aria-label", `Open ${m.serial} ${m.name || ""}, similarity ${fmt(m.score)}`);
  b.addEventListener("click", () => openViewer(m, i));
  li.append(b);
  return li;
}

function openViewer(m, i) {
  $("viewer-title").textContent = `${i + 1}. ${m.serial}${m.name ? " — " + m.name : ""}`;
  $("viewer-img").src = `/api/thumbnails/${encodeURIComponent(m.serial)}`;
  $("viewer-img").alt = `Registered mark ${m.serial}, enlarged`;
  const meta = [["serial", m.serial], ["name", m.name || ""], ["similarity", fmt(m.score)],
                ...(m.text ? [["words", m.text], ["words match", fmt(m.text_score)]] : []),
                ...Object.entries(m.metadata || {}).filter(([k]) => k !== "name")
                  .map(([k, v]) => [k, String(v)])];
  if (m.same_mark && i > 0) meta.push(["", "a rendition of the top match"]);
  $("viewer-meta").replaceChildren(...meta.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    return [dt, dd];
  }));
  $("viewer").showModal();
}

document.addEventListener("DOMContentLoaded", () => {
  setupPicker();
  setupCrop();
  $("search-form").addEventListener("submit", search);
  $("text").addEventListener("input", () => {
    $("search").disabled = !state.file && !$("text").value.trim();
  });
  loadInfo();
  window.addEventListener("resize", placeMarkBoxes);
});
