// The clipsearch gallery: a search box, a grid that loads more as you scroll, filters, and a
// viewer. Everything it shows comes from the JSON API beside it; the page address holds the
// query and the filters, so back/forward, reloads and shared links all work.
"use strict";

const PAGE = 48;
const $ = (id) => document.getElementById(id);
const FILTERS = ["in", "after", "before", "ext", "place", "camera", "kind", "rerank", "min_match", "collapse"];
const TEXT_FILTERS = ["in", "after", "before", "ext", "place", "camera", "kind"];  // sent as they are
const MAX_GROUPS = 200;  // duplicate groups shown at once; `clipsearch dupes` lists them all

const ui = {
  form: $("search"), q: $("q"), file: $("file"), grid: $("grid"), status: $("status"), more: $("more"),
  filters: $("filters"), toggle: $("toggle-filters"), tags: $("tags"), folders: $("folders"),
  in: $("f-in"), after: $("f-after"), before: $("f-before"), ext: $("f-ext"), rerank: $("f-rerank"),
  min: $("f-min"), clear: $("clear-filters"), viewer: $("viewer"), drop: $("drop"),
  place: $("f-place"), camera: $("f-camera"), places: $("places"), cameras: $("cameras"), kind: $("f-kind"),
  collapse: $("f-collapse"), dupes: $("dupes-link"), live: $("live"), fresh: $("fresh"),
};
const LIVE_EVERY = 3000;  // ms between two looks at /api/status when the server watches its folders

let info = null;           // /api/info, or null when there is no index yet
let state = emptyState();   // what is shown: mirrors the page address
let upload = null;          // the File of an image search (not in the address)
let hits = [];              // every hit loaded so far for the current state
let done = true;            // no further page (nothing is searched before the first answer)
let loading = false;
let generation = 0;         // bumped by every new search, so late answers of old ones are dropped
let current = -1;           // the hit open in the viewer
let shownImages = null;     // how many photos the index held when the shown results were asked for

function emptyState() {
  return { q: "", similar: null, upload: null, view: "", in: "", after: "", before: "", ext: "", kind: "",
           place: "", camera: "", tags: [], rerank: false, min_match: "", collapse: false };
}

// -- the page address <-> state ---------------------------------------------------------------
function readAddress() {
  const p = new URLSearchParams(location.search);
  const s = emptyState();
  s.q = p.get("q") || "";
  s.similar = p.get("similar");
  s.upload = p.get("upload");
  for (const key of [...TEXT_FILTERS, "min_match"]) s[key] = p.get(key) || "";
  s.rerank = p.get("rerank") === "1";
  s.collapse = p.get("collapse") === "1";
  s.view = p.get("view") === "dupes" ? "dupes" : "";
  s.tags = p.getAll("tag");
  return s;
}

function address(s) {
  const p = new URLSearchParams();
  if (s.view) p.set("view", s.view);
  else if (s.similar) p.set("similar", s.similar);
  else if (s.upload) p.set("upload", s.upload);
  else if (s.q) p.set("q", s.q);
  for (const key of [...TEXT_FILTERS, "min_match"]) if (s[key]) p.set(key, s[key]);
  if (s.rerank) p.set("rerank", "1");
  if (s.collapse) p.set("collapse", "1");
  for (const t of s.tags) p.append("tag", t);
  const text = p.toString();
  return text ? `/?${text}` : "/";
}

function go(next, replace = false) {
  state = next;
  const url = address(state);
  if (replace) history.replaceState(null, "", url);
  else if (url !== location.pathname + location.search) history.pushState(null, "", url);
  showState();
  run();
}

function showState() {
  ui.q.value = state.similar || state.upload ? "" : state.q;
  ui.in.value = state.in;
  ui.after.value = state.after;
  ui.before.value = state.before;
  ui.ext.value = state.ext;
  ui.place.value = state.place;
  ui.camera.value = state.camera;
  ui.kind.value = state.kind;
  ui.rerank.checked = state.rerank;
  ui.min.value = state.min_match;
  ui.collapse.checked = state.collapse;
  ui.dupes.classList.toggle("active", state.view === "dupes");
  for (const chip of ui.tags.querySelectorAll("button")) {
    chip.setAttribute("aria-pressed", String(state.tags.includes(chip.dataset.tag)));
  }
  const active = FILTERS.some((k) => state[k]) || state.tags.length > 0;
  ui.toggle.classList.toggle("active", active);
  if (active) showFilters(true);
  document.title = state.view ? "Duplicates · clipsearch" : state.q ? `${state.q} · clipsearch` : "clipsearch";
}

function showFilters(open) {
  ui.filters.hidden = !open;
  ui.toggle.setAttribute("aria-expanded", String(open));
}

// -- talking to the API --------------------------------------------------------------------------
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new Error("the server is not answering; is clipsearch serve still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error((body && body.error) || `the server answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function filterParams(offset) {
  const p = new URLSearchParams({ k: String(PAGE), offset: String(offset) });
  for (const key of TEXT_FILTERS) if (state[key]) p.set(key, state[key]);
  for (const t of state.tags) p.append("tag", t);
  return p;
}

function request(offset) {
  const p = filterParams(offset);
  if (state.similar) return api(`/api/similar/${encodeURIComponent(state.similar)}?${p}`);
  if (state.upload) {
    const form = new FormData();
    form.append("image", upload, upload.name);
    return api(`/api/similar?${p}`, { method: "POST", body: form });
  }
  p.set("q", state.q);
  if (state.rerank) p.set("rerank", "1");
  if (state.min_match) p.set("min_match", state.min_match);
  if (state.collapse) p.set("collapse", "1");
  return api(`/api/search?${p}`);
}

function deepest() {
  const limits = (info && info.limits) || { max_rank: 1000, max_reranked: 200 };
  return state.rerank || state.min_match ? limits.max_reranked : limits.max_rank;
}

// -- searching -----------------------------------------------------------------------------------
function run() {
  generation += 1;
  ui.fresh.hidden = true;
  shownImages = null;
  hits = [];
  done = false;
  loading = false;
  ui.grid.replaceChildren();
  closeViewer();
  if (!info) return;  // the status already says why
  if (state.view === "dupes") {
    done = true;
    loadDupes();
    return;
  }
  if (!state.q && !state.similar && !state.upload) {
    done = true;
    say(info.images
      ? `${info.images.toLocaleString()} photos indexed. Describe what you are looking for, e.g. "a dog on a beach", or drop an image here.`
      : `The index is empty: run  clipsearch index FOLDER --db ${info.db}  and search again.`, "hint");
    return;
  }
  if (state.upload && !upload) {
    done = true;
    say("Choose the image again to search by it (an uploaded image is not kept in the address).", "hint");
    return;
  }
  loadMore();
}

async function loadMore() {
  if (loading || done || !info) return;
  loading = true;
  const mine = generation;
  const reranking = (state.rerank || state.min_match) && !state.similar && !state.upload;
  if (hits.length === 0) {
    say(reranking && info && !info.models_loaded.rerank
      ? "Loading the re-ranking model (BLIP), the first time only: this takes a few seconds…"
      : "Searching…", "loading");
  }
  ui.more.classList.add("busy");
  try {
    const page = await request(hits.length);
    if (mine !== generation) return;
    if (reranking && info) info.models_loaded.rerank = true;
    const first = hits.length;
    hits.push(...page.hits);
    render(page.hits, first);
    done = page.hits.length < PAGE || hits.length + PAGE > deepest();
    if (hits.length === 0) {
      say(nothing(), "empty");
    } else {
      const total = page.total_considered.toLocaleString();
      say(`${hits.length.toLocaleString()} best of ${total} photos${done ? "" : " (scroll for more)"}` +
          (reranking ? " · re-ranked by BLIP: score = match probability + CLIP" : ""), "done");
    }
  } catch (err) {
    if (mine !== generation) return;
    done = true;
    say(`Could not search: ${err.message}`, "error");
  } finally {
    if (mine === generation) {
      loading = false;
      ui.more.classList.remove("busy");
      if (!done && nearBottom()) loadMore();
    }
  }
}

function nothing() {
  if (state.min_match) {
    return `Nothing matches "${state.q}" with a match probability of at least ${state.min_match}. ` +
           "Lower the minimum match, or describe it differently.";
  }
  return "No photos match these filters. Clear some filters to see more.";
}

function say(text, kind) {
  ui.status.textContent = text;
  ui.status.dataset.kind = kind;
}

function nearBottom() {
  return ui.more.getBoundingClientRect().top < window.innerHeight + 800;
}

// -- the grid ------------------------------------------------------------------------------------
function thumb(id, size) {
  return `/api/images/${id}/thumbnail?size=${size}`;
}

function scoreText(hit) {
  if (hit.similarity !== undefined) return `similarity ${hit.similarity.toFixed(3)}`;
  const text = hit.itm === undefined || hit.itm === null
    ? `score ${hit.score.toFixed(3)}`
    : `score ${hit.score.toFixed(3)} · match ${hit.itm.toFixed(3)}`;
  return hit.clip === undefined || hit.clip === null ? text : `${text} · CLIP ${hit.clip.toFixed(3)}`;
}

// "place: lisbon · name: img, 2041": which of the photo's own words the query matched
function matchedText(hit) {
  return Object.entries(hit.words || {}).map(([field, found]) => `${field}: ${found.join(", ")}`).join(" · ");
}

function clock(seconds) {  // as players show a time: 1:42, 1:02:03
  const whole = Math.floor(seconds || 0);
  const h = Math.floor(whole / 3600), m = Math.floor(whole / 60) % 60, s = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

function tile(hit, index, caption) {
  const tile = document.createElement("figure");
  tile.className = "tile";
  tile.dataset.index = String(index);
  tile.dataset.id = String(hit.id);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.title = [basename(hit.path), scoreText(hit), matchedText(hit)].filter(Boolean).join("\n");
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = hit.caption || basename(hit.path);  // BLIP's sentence, for screen readers
  img.src = thumb(hit.id, 256);
  img.srcset = `${thumb(hit.id, 256)} 256w, ${thumb(hit.id, 512)} 512w`;
  img.sizes = "(max-width: 600px) 34vw, 200px";
  img.addEventListener("load", () => tile.classList.add("loaded"));
  img.addEventListener("error", () => tile.classList.add("broken"));
  open.append(img);
  if (hit.kind === "video" || hit.motion) {
    // a video at the second of its best moment, or a Live Photo's motion
    const badge = document.createElement("span");
    badge.className = "play";
    badge.textContent = hit.kind === "video" ? `▶ ${clock(hit.t)}` : "▶ live";
    badge.setAttribute("aria-label", hit.kind === "video" ? `video, at ${clock(hit.t)}` : "Live Photo");
    open.append(badge);
    tile.classList.add("playable");
  }
  const score = document.createElement("figcaption");
  score.className = "score";
  score.textContent = caption;
  if (hit.words && Object.keys(hit.words).length) {
    const mark = document.createElement("span");
    mark.className = "matched";
    mark.title = `Its own words matched: ${matchedText(hit)}`;
    mark.textContent = ` · ${Object.values(hit.words).flat().slice(0, 2).join(" ")}`;
    score.append(mark);
  }
  const similar = document.createElement("button");
  similar.type = "button";
  similar.className = "similar";
  similar.title = "Find similar photos";
  similar.setAttribute("aria-label", `Photos similar to ${basename(hit.path)}`);
  similar.textContent = "≈";
  tile.append(open, score, similar);
  return tile;
}

function render(page, first) {
  const fragment = document.createDocumentFragment();
  page.forEach((hit, i) => {
    fragment.append(tile(hit, first + i, hit.itm === undefined || hit.itm === null
      ? hit.score.toFixed(3) : `${hit.itm.toFixed(2)} · ${hit.clip.toFixed(3)}`));
  });
  ui.grid.append(fragment);
}

// -- duplicates ----------------------------------------------------------------------------------
async function loadDupes() {
  const mine = generation;
  say("Looking for duplicate photos…", "loading");
  const p = new URLSearchParams();
  if (state.in) p.set("in", state.in);
  try {
    const found = await api(`/api/dupes?${p}`);
    if (mine !== generation) return;
    const groups = found.groups.slice(0, MAX_GROUPS);
    const fragment = document.createDocumentFragment();
    for (const group of groups) {
      const section = document.createElement("section");
      section.className = "dupe-group";
      section.dataset.group = String(group.group);
      const heading = document.createElement("h2");
      heading.textContent = `Group ${group.group} · ${group.kind === "exact" ? "identical copies" : "near-duplicates"} · ` +
        `${group.members.length} photos · keep the first: ${group.reason}`;
      const row = document.createElement("div");
      row.className = "dupe-row";
      group.members.forEach((member, i) => {
        const hit = { ...member, rank: hits.length + 1, score: member.similarity, tags: [] };
        const kept = i === 0;
        const label = `${kept ? "keep · " : ""}${member.width}×${member.height} · ${size(member.size)}` +
          (kept ? "" : ` · ${member.similarity.toFixed(3)}`);
        const shown = tile(hit, hits.length, label);
        if (kept) shown.classList.add("keeper");
        hits.push(hit);
        row.append(shown);
      });
      section.append(heading, row);
      fragment.append(section);
    }
    ui.grid.append(fragment);
    const extra = found.groups.reduce((n, g) => n + g.members.length - 1, 0);
    say(found.groups.length === 0
      ? `No duplicates${state.in ? " in this folder" : ""} (CLIP similarity ${found.threshold} or more, or identical files).`
      : `${found.groups.length.toLocaleString()} groups of duplicates; ${extra.toLocaleString()} photos besides the ` +
        `ones to keep (marked)${found.groups.length > groups.length ? `; showing the first ${groups.length}` : ""}. ` +
        "clipsearch never deletes anything: clipsearch dupes --paths --extras lists the rest.", "done");
  } catch (err) {
    if (mine !== generation) return;
    say(`Could not look for duplicates: ${err.message}`, "error");
  }
}

ui.dupes.addEventListener("click", (event) => {
  event.preventDefault();
  upload = null;
  go({ ...emptyState(), view: "dupes", in: state.in });
});

ui.grid.addEventListener("click", (event) => {
  const tile = event.target.closest(".tile");
  if (!tile) return;
  const index = Number(tile.dataset.index);
  if (event.target.closest(".similar")) searchSimilar(hits[index].id);
  else if (event.target.closest(".open")) openViewer(index);
});

function searchSimilar(id) {
  upload = null;
  go({ ...state, q: "", similar: String(id), upload: null, view: "", rerank: false, min_match: "" });
  window.scrollTo(0, 0);
}

// -- the viewer ----------------------------------------------------------------------------------
// The picture is fitted to the viewer, small photos scaled up as photo viewers do (CSS); the
// thumbnail asked for is the smallest that has as many pixels as the screen shows, or the whole
// photo when the screen shows more than it has: sharp on a 4K or high-density screen.
function rendition(hit, box) {
  const sizes = (info && info.limits && info.limits.thumbnail_sizes) || [256, 512, 1024];
  const dpr = window.devicePixelRatio || 1;
  const longest = Math.max(hit.width || 0, hit.height || 0);
  let need = Math.max(box.width, box.height) * dpr;
  if (hit.width && hit.height) {
    const fit = Math.min(box.width / hit.width, box.height / hit.height) * dpr;
    need = longest * Math.min(fit, 1);  // never more pixels than the photo has
  }
  return sizes.find((s) => s >= need) || sizes[sizes.length - 1];
}

function openViewer(index) {
  if (index < 0 || index >= hits.length) return;
  current = index;
  const hit = hits[index];
  const img = $("v-img");
  img.src = thumb(hit.id, 512);  // at once from the cache, then sharper
  ui.viewer.hidden = false;  // laid out first: the rendition depends on the viewer's size
  const sharp = rendition(hit, img.getBoundingClientRect());
  if (sharp > 512) {
    const large = new Image();
    large.onload = () => { if (current === index) img.src = large.src; };
    large.src = thumb(hit.id, sharp);
  }
  img.alt = hit.caption || basename(hit.path);
  const video = $("v-video");
  if (hit.kind === "video" || hit.motion) {
    // played from the moment the search found; the server answers Range requests, so the
    // browser fetches what it plays, not the whole file
    video.poster = thumb(hit.id, 512);
    video.src = hit.kind === "video" ? `/api/images/${hit.id}/file#t=${hit.t}` : `/api/images/${hit.id}/motion`;
    video.hidden = false;
    img.hidden = true;
  } else {
    stopVideo();
    img.hidden = false;
  }
  $("v-path").textContent = hit.kind === "video" ? `${hit.path} @ ${clock(hit.t)}`
    : hit.original ? `${hit.path} + ${basename(hit.original)}` : hit.path;
  $("v-caption").textContent = hit.caption || "";
  const parts = [`#${hit.rank}`, scoreText(hit)];
  if (hit.width && hit.height) parts.push(`${hit.width} × ${hit.height}`);
  parts.push(hit.taken ? `taken ${hit.taken.replace("T", " ")}` : "no capture date");
  $("v-meta").textContent = parts.join(" · ");
  const own = [hit.place, [hit.camera, hit.lens].filter(Boolean).join(", "),
               (hit.keywords || []).join(", "), (hit.people || []).join(", ")];
  $("v-words").textContent = own.filter(Boolean).join(" · ");
  $("v-matched").textContent = hit.words && Object.keys(hit.words).length ? `matched ${matchedText(hit)}` : "";
  const tags = $("v-tags");
  tags.replaceChildren(...hit.tags.map((t) => tagChip(t, "v-tag")));
  // the file to keep: a RAW + JPEG pair's RAW, else the file itself (a RAW's, not its rendition)
  $("v-original").href = `/api/images/${hit.id}/original`;
  $("v-original").textContent = hit.original ? `Original (${basename(hit.original)})` : "Original";
  ui.viewer.hidden = false;
  document.body.classList.add("viewing");
  ui.viewer.querySelector(".close").focus({ preventScroll: true });
  api(`/api/images/${hit.id}`).then((record) => {
    if (current === index) $("v-meta").textContent = `${parts.join(" · ")} · ${size(record.bytes)}`;
  }).catch(() => {});
  if (index >= hits.length - 4) loadMore();
}

function stopVideo() {
  const video = $("v-video");
  video.pause();
  video.removeAttribute("src");
  video.load();  // lets the connection go
  video.hidden = true;
}

function closeViewer() {
  if (ui.viewer.hidden) return;
  stopVideo();
  ui.viewer.hidden = true;
  document.body.classList.remove("viewing");
  const tile = ui.grid.querySelector(`.tile[data-index="${current}"] .open`);
  if (tile) tile.focus({ preventScroll: false });
  current = -1;
}

function size(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

ui.viewer.querySelector(".close").addEventListener("click", closeViewer);
ui.viewer.querySelector(".prev").addEventListener("click", () => openViewer(current - 1));
ui.viewer.querySelector(".next").addEventListener("click", () => openViewer(current + 1));
$("v-similar").addEventListener("click", () => searchSimilar(hits[current].id));
ui.viewer.addEventListener("click", (event) => { if (event.target === ui.viewer) closeViewer(); });

document.addEventListener("keydown", (event) => {
  if (!ui.viewer.hidden) {
    if (event.key === "Escape") closeViewer();
    else if (event.key === "ArrowLeft") openViewer(current - 1);
    else if (event.key === "ArrowRight") openViewer(current + 1);
    else return;
    event.preventDefault();
    return;
  }
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    event.preventDefault();
    ui.q.focus();
    ui.q.select();
  }
});

// -- tags, folders, filters ----------------------------------------------------------------------
function tagChip(label, kind, count) {
  const chip = document.createElement("button");
  chip.type = "button";
  chip.className = `chip ${kind}`;
  chip.dataset.tag = label;
  chip.textContent = count === undefined ? label : `${label} ${count}`;
  chip.setAttribute("aria-pressed", String(state.tags.includes(label)));
  return chip;
}

function toggleTag(label) {
  const tags = state.tags.includes(label) ? state.tags.filter((t) => t !== label) : [...state.tags, label];
  go({ ...state, tags });
}

ui.tags.addEventListener("click", (event) => {
  const chip = event.target.closest(".chip");
  if (chip) toggleTag(chip.dataset.tag);
});

$("v-tags").addEventListener("click", (event) => {
  const chip = event.target.closest(".chip");
  if (!chip) return;
  closeViewer();
  if (!state.tags.includes(chip.dataset.tag)) toggleTag(chip.dataset.tag);
});

async function loadTagsAndFolders() {
  try {
    const [{ tags }, { folders }, facets] = await Promise.all([api("/api/tags"), api("/api/folders"),
                                                                api("/api/facets")]);
    for (const [list, items] of [[ui.places, facets.places], [ui.cameras, facets.cameras]]) {
      list.replaceChildren(...items.map((item) => {
        const option = document.createElement("option");
        option.value = item.name;
        option.label = `${item.images} photos`;
        return option;
      }));
    }
    ui.tags.replaceChildren(...tags.filter((t) => t.images > 0).map((t) => tagChip(t.label, "filter", t.images)));
    if (!tags.length) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = "No tags yet: run clipsearch tag to add some.";
      ui.tags.replaceChildren(hint);
    }
    ui.folders.replaceChildren(...folders.map((f) => {
      const option = document.createElement("option");
      option.value = f.path;
      option.label = `${f.images} photos`;
      return option;
    }));
  } catch (err) {
    // filters stay usable by hand; the search itself reports errors
  }
}

function fromFilters() {
  const min = ui.min.value.trim();
  return { ...state, in: ui.in.value.trim(), after: ui.after.value, before: ui.before.value,
           ext: ui.ext.value, place: ui.place.value.trim(), camera: ui.camera.value.trim(), kind: ui.kind.value,
           rerank: ui.rerank.checked || min !== "", min_match: min,
           collapse: ui.collapse.checked };
}

for (const input of [ui.after, ui.before, ui.ext, ui.rerank, ui.in, ui.min, ui.collapse, ui.place, ui.camera,
                     ui.kind]) {
  input.addEventListener("change", () => go(fromFilters()));
}
ui.toggle.addEventListener("click", () => showFilters(ui.filters.hidden));
ui.clear.addEventListener("click", () => go({ ...emptyState(), q: state.q, similar: state.similar,
                                                upload: state.upload }));

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = ui.q.value.trim();
  if (!q) return;
  upload = null;
  go({ ...fromFilters(), q, similar: null, upload: null, view: "" });
  ui.q.blur();
});

// -- searching by an image file ------------------------------------------------------------------
function searchUpload(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && !/\.(heic|heif|avif|tiff?)$/i.test(file.name)) {
    say(`${file.name} is not an image file; choose a JPEG, PNG, HEIC, WebP … photo.`, "error");
    return;
  }
  upload = file;
  go({ ...state, q: "", similar: null, upload: file.name, view: "", rerank: false, min_match: "" });
}

ui.file.addEventListener("change", () => {
  searchUpload(ui.file.files[0]);
  ui.file.value = "";
});

let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
  dragDepth += 1;
  ui.drop.hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) ui.drop.hidden = true;
});
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  ui.drop.hidden = true;
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) searchUpload(file);
});

// -- start ---------------------------------------------------------------------------------------
window.addEventListener("popstate", () => {
  state = readAddress();
  showState();
  run();
});

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { rootMargin: "800px" }).observe(ui.more);

// -- serve --watch: the watcher's state, and new photos on offer -----------------------------------
function liveText(s) {
  const offline = Object.keys(s.offline || {});
  if (offline.length) return [`offline: ${offline.join(", ")}`, "offline"];
  if (s.progress && s.progress.total) return [`indexing ${s.progress.done} of ${s.progress.total}`, "busy"];
  if (s.queued) return [`${s.queued} changes waiting`, "busy"];
  if (s.state === "scanning" || s.state === "starting") return ["checking the folders", "busy"];
  return ["watching the folders", "idle"];
}

async function watchLive() {
  let s;
  try {
    s = await api("/api/status");
  } catch (err) {
    setTimeout(watchLive, LIVE_EVERY * 3);
    return;
  }
  if (s.state === "not watching") return;  // nothing will change by itself: no need to look again
  const [text, kind] = liveText(s);
  ui.live.textContent = text;
  ui.live.dataset.kind = kind;
  ui.live.title = s.last_commit ? `last change indexed ${s.last_commit.at}` : "";
  ui.live.hidden = false;
  if (shownImages === null) shownImages = s.images;
  const added = s.images - shownImages;
  if (s.images !== shownImages && (state.q || state.similar || state.upload || state.view)) {
    ui.fresh.textContent = added > 0 ? `${added} new photo${added === 1 ? "" : "s"}: show` : "Library changed: refresh";
    ui.fresh.hidden = false;
  } else if (s.images !== shownImages) {
    shownImages = s.images;  // the start page shows the count: just say the new one
    if (info) info.images = s.images;
    run();
  }
  setTimeout(watchLive, LIVE_EVERY);
}

ui.fresh.addEventListener("click", () => run());

async function start() {
  state = readAddress();
  showState();
  say("Connecting…", "loading");
  try {
    info = await api("/api/info");
  } catch (err) {
    say(err.status === 503 ? `No index to search yet: ${err.message}` : `Could not reach the index: ${err.message}`,
        "error");
    setTimeout(start, 5000);  // the server follows the index: once it exists, this page does too
    return;
  }
  loadTagsAndFolders();
  run();
  watchLive();
}

start();
