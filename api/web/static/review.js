// Review a finished tagging job: a page of photos at a time, a decision per photo saved as it is made,
// bulk decisions for a selection, keyboard shortcuts, and an apply in steps with its progress and failures.
"use strict";
const $ = (id) => document.getElementById(id);
const jobId = new URLSearchParams(location.search).get("job");
const api = (path) => `/v1/tagging/jobs/${encodeURIComponent(jobId)}${path}`;
const FILTERS = { all: "All", needs_review: "Needs review", low_confidence: "Low confidence", flagged: "Flagged", unmatched: "Unmatched", duplicate: "Duplicates", undecided: "Undecided" };
const PAGE = 24;
const state = { filter: "needs_review", sort: "order", offset: 0, rows: [], total: 0, focus: 0, selected: new Set() };

async function call(path, options = {}) {
  const resp = await seesku.fetch(api(path), options);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  return body;
}

const post = (path, body) => call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

async function load() {
  $("error").textContent = "";
  try {
    const q = new URLSearchParams({ filter: state.filter, sort: state.sort, offset: state.offset, limit: PAGE });
    const page = await call(`/review?${q}`);
    Object.assign(state, { rows: page.rows, total: page.total, focus: Math.min(state.focus, Math.max(0, page.rows.length - 1)) });
    drawFilters(page.counts);
    drawGrid();
    $("page-info").textContent = page.total ? `${page.offset + 1}-${page.offset + page.rows.length} of ${page.total}` : "no photos";
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + PAGE >= page.total;
    $("pending").textContent = `${page.counts.all - page.counts.undecided} of ${page.counts.all} photos decided.`;
  } catch (err) { $("error").textContent = err.message; }
}

function drawFilters(counts) {
  $("filters").replaceChildren(...Object.entries(FILTERS).map(([name, label]) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${label} (${counts[name]})`;
    b.setAttribute("aria-pressed", String(name === state.filter));
    b.dataset.filter = name;
    b.onclick = () => { Object.assign(state, { filter: name, offset: 0, focus: 0 }); state.selected.clear(); load(); };
    return b;
  }));
}

function decisionText(d) {
  if (!d) return "undecided";
  const what = d.action === "skip" ? "skip" : d.action === "new_product" ? `new product ${d.product_id}` : `add to ${d.product_id}`;
  return d.outcome ? `${what}: ${d.outcome}${d.error ? ` (${d.error})` : ""}` : what;
}

function card(row, i) {
  const li = document.createElement("li");
  li.className = "card" + (i === state.focus ? " focus" : "");
  li.tabIndex = i === state.focus ? 0 : -1;
  li.dataset.path = row.path;
  const top = row.matches[0];
  const img = document.createElement("img");
  img.alt = row.path;
  seesku.showImage(img, row.thumbnail_url).catch(() => {});
  li.innerHTML = `
    <label class="pick"><input type="checkbox" ${state.selected.has(row.path) ? "checked" : ""}> <span class="path"></span></label>
    <div class="tags"><b class="fine"></b> · <span class="coarse"></span> <span class="muted conf"></span></div>
    <div class="muted matches"></div><div class="reasons"></div>
    <div class="actions">
      <input class="product" size="16" aria-label="product id">
      <button type="button" class="add">Add</button><button type="button" class="new">New product</button><button type="button" class="skip">Skip</button>
    </div>
    <form class="new-form" hidden aria-label="New product">
      <label>id <input name="product_id" required pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}"></label>
      <label>name <input name="name" required></label>
      <label>fine <input name="fine_category" required></label>
      <label>coarse <input name="coarse_category" required></label>
      <button type="submit">Create</button>
    </form>
    <p class="decision" role="status"></p>`;
  li.prepend(img);
  li.querySelector(".path").textContent = row.path;
  li.querySelector(".fine").textContent = row.fine || "unreadable";
  li.querySelector(".coarse").textContent = row.coarse || "";
  li.querySelector(".conf").textContent = row.fine_probability != null ? `${Math.round(row.fine_probability * 100)} %` : "";
  li.querySelector(".matches").textContent = row.matches.length ? "matches: " + row.matches.map((m) => `${m.product_id} ${m.score.toFixed(2)}`).join(", ") : "no catalogue match";
  li.querySelector(".reasons").replaceChildren(...row.review_reasons.map((r) => Object.assign(document.createElement("span"), { className: "chip", textContent: r.replace("_", " ") })));
  li.querySelector(".product").value = row.decision?.product_id || (top ? top.product_id : "");
  li.querySelector(".decision").textContent = decisionText(row.decision);
  const settled = row.decision && row.decision.outcome === "applied";
  li.querySelectorAll(".actions button, .actions input").forEach((el) => { el.disabled = settled || row.status !== "ok"; });
  li.querySelector("input[type=checkbox]").onchange = (e) => toggle(row.path, e.target.checked);
  li.querySelector(".add").onclick = () => decide([row], "add_photo", li.querySelector(".product").value.trim());
  li.querySelector(".new").onclick = () => openNewProduct(li, row);
  li.querySelector(".new-form").onsubmit = (e) => {
    e.preventDefault();
    decide([row], "new_product", Object.fromEntries(new FormData(e.target)));
  };
  li.querySelector(".skip").onclick = () => decide([row], "skip");
  li.onfocus = () => { state.focus = i; };
  return li;
}

function drawGrid() {
  $("grid").replaceChildren(...state.rows.map(card));
  $("selected").textContent = `${state.selected.size} selected`;
  for (const id of ["bulk-top", "bulk-skip", "bulk-add"]) $(id).disabled = !state.selected.size;
}

function toggle(path, on) {
  if (on) state.selected.add(path); else state.selected.delete(path);
  drawGrid();
}

// A new product's fields, pre-filled from the tags: the id from the photo's file name, the model's categories.
function openNewProduct(li, row) {
  const form = li.querySelector(".new-form");
  const stem = row.path.split("/").pop().replace(/\.[^.]+$/, "").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  const d = row.decision?.product;
  const field = (name) => form.elements.namedItem(name);
  field("product_id").value = d?.product_id || stem || "new-product";
  field("name").value = d?.name || field("product_id").value.replace(/[-_]+/g, " ");
  field("fine_category").value = d?.fine_category || row.fine || "";
  field("coarse_category").value = d?.coarse_category || row.coarse || "";
  form.hidden = false;
  field("product_id").focus();
}

// `target`: the product id for add_photo (default: each photo's top match), the new product for new_product.
async function decide(rows, action, target) {
  $("error").textContent = "";
  const decisions = [];
  for (const row of rows) {
    if (action === "new_product") decisions.push({ key: row.path, action, product: target });
    else if (action === "add_photo") {
      const id = target === undefined ? row.matches[0]?.product_id : target;
      if (!id) { $("error").textContent = `${row.path}: no product to add it to`; return; }
      decisions.push({ key: row.path, action, product_id: id });
    } else decisions.push({ key: row.path, action });
  }
  try {
    await post("/decisions", { decisions });
    state.selected.clear();
    await load();
  } catch (err) { $("error").textContent = err.message; }
}

const selectedRows = () => state.rows.filter((r) => state.selected.has(r.path) && r.status === "ok");
$("bulk-top").onclick = () => decide(selectedRows(), "add_photo");
$("bulk-skip").onclick = () => decide(selectedRows(), "skip");
$("bulk-add").onclick = () => decide(selectedRows(), "add_photo", $("bulk-product").value.trim());
$("sort").onchange = (e) => { Object.assign(state, { sort: e.target.value, offset: 0 }); load(); };
$("prev").onclick = () => { state.offset = Math.max(0, state.offset - PAGE); load(); };
$("next").onclick = () => { state.offset += PAGE; load(); };

function moveFocus(step) {
  state.focus = Math.max(0, Math.min(state.rows.length - 1, state.focus + step));
  drawGrid();
  $("grid").children[state.focus]?.focus();
}

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input:not([type=checkbox]), select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  const row = state.rows[state.focus];
  const keys = {
    j: () => moveFocus(1), k: () => moveFocus(-1),
    a: () => row && decide([row], "add_photo"), s: () => row && decide([row], "skip"),
    n: () => row && openNewProduct($("grid").children[state.focus], row), x: () => row && toggle(row.path, !state.selected.has(row.path)),
  };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

// Apply in steps of a few products, so the page can show how far it is; each step is idempotent.
$("apply").onclick = async () => {
  const bar = $("apply-progress");
  $("apply").disabled = true;
  $("apply-failed").replaceChildren();
  let applied = 0, photos = 0, skipped = 0, failed = [];
  try {
    for (let remaining = null; remaining !== 0;) {
      const r = await post("/apply?max_products=10", {});
      applied += r.applied.length;
      photos += r.applied.reduce((n, p) => n + p.added, 0);
      skipped += r.skipped;
      failed = failed.concat(r.failed);
      remaining = r.remaining;
      bar.hidden = false;
      bar.max = applied + failed.length + remaining || 1;
      bar.value = applied + failed.length;
      $("apply-status").textContent = `${applied} products changed (${photos} photos added), ${failed.length} failed, ${remaining} to go`;
    }
    $("apply-status").textContent = `Applied: ${applied} products changed, ${photos} photos added, ${skipped} skipped, ${failed.length} failed.`;
    $("apply-failed").replaceChildren(...failed.map((f) => Object.assign(document.createElement("li"), { textContent: `${f.product_id} (${f.photos.join(", ")}): ${f.error}` })));
  } catch (err) { $("error").textContent = `Apply stopped: ${err.message}`; }
  $("apply").disabled = false;
  load();
};

if (!jobId) $("error").textContent = "No job given: open this page from the tagging page (review?job=ID).";
else { $("job-id").textContent = jobId; load(); }
document.addEventListener("seesku-key", load);
