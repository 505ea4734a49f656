// The search page: text, image and composed (image + text) queries against /v1/search.
// Paths are relative so that the page also works behind a path prefix.
"use strict";

const KEY_STORE = "cliprt.apiKey";
const $ = (id) => document.getElementById(id);
const form = $("search"), results = $("results"), errorBox = $("error"), statusLine = $("status");
const fileInput = $("file"), drop = $("drop"), preview = $("preview"), alpha = $("alpha");
let image = null;          // {name, dataUri} of the image query
let thumbUrls = [];        // object URLs of the shown thumbnails (revoked on the next search)

function apiKey() { try { return localStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; } }

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The API's error.message, or the status line when the body is not the API's error shape.
async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status} ${resp.statusText}`.trim();
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function askForKey(message) {
  $("auth").hidden = false;
  if (message) showError(message);
  $("key").focus();
}

async function loadModel() {
  let resp;
  try { resp = await fetch("v1/models", {headers: headers(false)}); }
  catch (e) { showError("The service does not answer: " + e.message); return; }
  if (resp.status === 401) { askForKey(apiKey() ? "The stored API key was refused." : ""); return; }
  if (!resp.ok) { showError(await errorMessage(resp)); return; }
  $("auth").hidden = true;
  const m = (await resp.json()).data[0];
  const idx = m.index ? `${m.index.rows.toLocaleString()} items` : "no collection loaded";
  $("model").textContent = `${m.id} · ${m.dim}-d · ${idx}`;
}

// ------------------------------------------------------------------ the image query
function setImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    image = {name: file.name, dataUri: reader.result};
    preview.src = reader.result;
    preview.alt = "query image " + file.name;
    preview.hidden = false;
    $("file-name").textContent = file.name;
    $("clear-image").hidden = false;
    syncAlpha();
  };
  reader.onerror = () => showError(`Cannot read ${file.name}`);
  reader.readAsDataURL(file);
}

function clearImage() {
  image = null;
  fileInput.value = "";
  preview.hidden = true;
  preview.removeAttribute("src");
  $("file-name").textContent = "";
  $("clear-image").hidden = true;
  syncAlpha();
}

function syncAlpha() {
  alpha.disabled = !(image && $("q").value.trim());
  $("alpha-field").classList.toggle("off", alpha.disabled);
}

preview.addEventListener("error", () => { preview.hidden = true; });
fileInput.addEventListener("change", () => setImage(fileInput.files[0]));
$("clear-image").addEventListener("click", clearImage);
$("q").addEventListener("input", syncAlpha);
alpha.addEventListener("input", () => { $("alpha-value").textContent = Number(alpha.value).toFixed(2); });
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) setImage(file);
});

// ------------------------------------------------------------------ search
function buildQuery() {
  const text = $("q").value.trim();
  if (image && text) return {composed: {image: image.dataUri, text: text, alpha: Number(alpha.value)}};
  if (image) return {image: image.dataUri};
  if (text) return {text: text};
  return null;
}

function clearResults() {
  for (const u of thumbUrls) URL.revokeObjectURL(u);
  thumbUrls = [];
  results.replaceChildren();
}

async function search(e) {
  if (e) e.preventDefault();
  const query = buildQuery();
  const seq = Number(results.dataset.seq) + 1;
  results.dataset.seq = String(seq);
  results.dataset.state = "loading";
  showError("");
  if (!query) {
    clearResults();
    showError("Type a query or add an image.");
    results.dataset.state = "error";
    return;
  }
  const k = Math.max(1, Math.floor(Number($("k").value) || 10));
  statusLine.textContent = "Searching…";
  $("go").disabled = true;
  const t0 = performance.now();
  try {
    const resp = await fetch("v1/search", {method: "POST", headers: headers(true), body: JSON.stringify({query, k})});
    if (seq !== Number(results.dataset.seq)) return;  // a newer search has started
    if (!resp.ok) {
      const message = await errorMessage(resp);
      clearResults();
      statusLine.textContent = "";
      if (resp.status === 401) askForKey(message); else showError(message);
      results.dataset.state = "error";
      return;
    }
    const hits = (await resp.json()).results;
    render(hits);
    statusLine.textContent = `${hits.length} result${hits.length === 1 ? "" : "s"} in ${Math.round(performance.now() - t0)} ms`;
    results.dataset.state = "done";
  } catch (err) {
    clearResults();
    statusLine.textContent = "";
    showError("The service does not answer: " + err.message);
    results.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
}

function basename(path) { return String(path).split(/[\\/]/).pop(); }

function humanSize(n) {
  if (typeof n !== "number") return null;
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render(hits) {
  clearResults();
  hits.forEach((hit, rank) => {
    const md = hit.metadata || {};
    const card = el("li", "card");
    card.dataset.id = String(hit.id);
    card.dataset.score = String(hit.score);

    const figure = el("div", "thumb");
    figure.appendChild(el("span", "placeholder", "no preview"));
    card.appendChild(figure);
    loadThumb(hit.id, md.path, figure);

    const body = el("div", "body");
    const head = el("div", "head");
    head.appendChild(el("span", "rank", `#${rank + 1}`));
    head.appendChild(el("span", "score", hit.score.toFixed(4)));
    body.appendChild(head);
    const title = el("p", "title", md.path ? basename(md.path) : `item ${hit.id}`);
    if (md.path) title.title = md.path;
    body.appendChild(title);

    const dl = el("dl");
    const add = (k, v) => {
      if (v === null || v === undefined || v === "") return;
      dl.appendChild(el("dt", null, k));
      const text = typeof v === "object" ? JSON.stringify(v) : String(v);
      const dd = el("dd", null, text);
      dd.title = text;
      dl.appendChild(dd);
    };
    add("id", hit.id);
    add("path", md.path);
    if (md.key && md.key !== md.path) add("key", md.key);
    add("size", humanSize(md.size));
    for (const [k, v] of Object.entries(md.meta || {})) add(k, v);
    body.appendChild(dl);
    card.appendChild(body);
    results.appendChild(card);
  });
}

// Thumbnails come from GET v1/items/{id}/thumbnail, fetched with the key when one is set;
// a card keeps its placeholder when there is none.
async function loadThumb(id, path, figure) {
  try {
    const resp = await fetch(`v1/items/${encodeURIComponent(id)}/thumbnail`, {headers: headers(false)});
    if (!resp.ok) return;
    const type = resp.headers.get("content-type") || "";
    if (!type.startsWith("image/")) return;
    const url = URL.createObjectURL(await resp.blob());
    thumbUrls.push(url);
    const img = el("img");
    img.alt = path ? basename(path) : `item ${id}`;
    img.loading = "lazy";
    img.onload = () => figure.replaceChildren(img);
    img.onerror = () => img.remove();
    img.src = url;
  } catch (e) { /* keeps the placeholder */ }
}

form.addEventListener("submit", search);
$("auth-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { localStorage.setItem(KEY_STORE, $("key").value.trim()); } catch (err) { /* private mode */ }
  $("key").value = "";
  showError("");
  await loadModel();
  if (!$("auth").hidden) return;
  if (buildQuery()) await search();
  else $("q").focus();
});
syncAlpha();
loadModel();
