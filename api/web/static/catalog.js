// The catalogue for merchandisers: find products by id or name and category, page through them, and edit a
// product: its name and categories, its reference photos (add, remove). Only the public API is used.
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 24;
const state = { cursors: [null], page: 0, next: null, product: null };

async function call(url, options = {}) {
  const resp = await seesku.fetch(url, options);
  const body = resp.status === 204 ? null : await resp.json();
  if (!resp.ok) throw new Error(body && body.error ? body.error.message : `HTTP ${resp.status}`);
  return body;
}

function shown(promise) {
  $("error").textContent = "";
  return promise.catch((err) => { $("error").textContent = err.message; });
}

async function loadCategories() {
  const { fine, coarse } = await call("/v1/categories");
  const names = [...new Set([...coarse.map((c) => c.name), ...fine.map((f) => f.name)])].sort();
  $("category").append(...names.map((n) => new Option(n, n)));
}

async function loadPage() {
  const q = new URLSearchParams({ limit: PAGE });
  if ($("q").value.trim()) q.set("q", $("q").value.trim());
  if ($("category").value) q.set("category", $("category").value);
  const cursor = state.cursors[state.page];
  if (cursor) q.set("cursor", cursor);
  const page = await call(`/v1/products?${q}`);
  state.next = page.next_cursor;
  $("products").replaceChildren(...page.items.map(productCard));
  $("page-info").textContent = page.items.length ? `page ${state.page + 1}` : "no products found";
  $("prev").disabled = state.page === 0;
  $("next").disabled = !state.next;
}

function productCard(p) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.productId = p.product_id;
  const img = document.createElement("img");
  img.alt = p.images.length ? `Catalogue photo of ${p.name}` : "";
  if (p.images.length) seesku.showImage(img, p.images[0].thumbnail_url).catch(() => {});
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = p.name;
  button.onclick = () => shown(openProduct(p.product_id));
  const meta = document.createElement("div");
  meta.className = "muted";
  meta.textContent = `${p.product_id} · ${p.fine_category} / ${p.coarse_category} · ${p.images.length} photos`;
  li.append(img, button, meta);
  return li;
}

async function openProduct(id) {
  const p = await call(`/v1/products/${encodeURIComponent(id)}`);
  state.product = p;
  $("product").hidden = false;
  $("product-title").textContent = `${p.name} (${p.product_id})`;
  for (const name of ["name", "fine_category", "coarse_category"]) $("edit").elements.namedItem(name).value = p[name];
  $("photos").replaceChildren(...p.images.map((im) => photoFigure(p, im)));
  $("saved").textContent = "";
}

function photoFigure(p, im) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = `Reference photo ${im.image_id} of ${p.name}`;
  seesku.showImage(img, im.thumbnail_url).catch(() => {});
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", `Remove photo ${im.image_id}`);
  remove.onclick = () => shown((async () => {
    await call(`/v1/products/${encodeURIComponent(p.product_id)}/images/${im.image_id}`, { method: "DELETE" });
    await openProduct(p.product_id);
    $("saved").textContent = `Photo ${im.image_id} removed: it no longer matches searches.`;
  })());
  fig.append(img, remove);
  return fig;
}

$("edit").onsubmit = (e) => {
  e.preventDefault();
  const body = Object.fromEntries(new FormData(e.target));
  const id = state.product.product_id;
  shown((async () => {
    await call(`/v1/products/${encodeURIComponent(id)}`, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    await Promise.all([openProduct(id), loadPage()]);
    $("saved").textContent = "Saved.";  // only once the list shows the new name too
  })());
};

$("add-photos").onsubmit = (e) => {
  e.preventDefault();
  const files = $("files").files;
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  const id = state.product.product_id;
  shown((async () => {
    const r = await call(`/v1/products/${encodeURIComponent(id)}/images`, { method: "POST", body: form });
    $("files").value = "";
    await openProduct(id);
    $("saved").textContent = `${r.added.length} photos added${r.skipped_duplicates ? `, ${r.skipped_duplicates} it already had` : ""}.`;
  })());
};

$("find").onsubmit = (e) => { e.preventDefault(); Object.assign(state, { cursors: [null], page: 0 }); shown(loadPage()); };
$("prev").onclick = () => { state.page -= 1; shown(loadPage()); };
$("next").onclick = () => { state.cursors[state.page + 1] = state.next; state.page += 1; shown(loadPage()); };
document.addEventListener("seesku-key", () => shown(Promise.all([loadCategories(), loadPage()])));
shown(Promise.all([loadCategories(), loadPage()]));
