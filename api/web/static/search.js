// Camera search: send the photo to POST /v1/search from the web channel and show the matches.
"use strict";
const $ = (id) => document.getElementById(id);
const pct = (p) => `${(100 * p).toFixed(1)} %`;

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

async function search(file) {
  $("error").textContent = "";
  $("status").textContent = "Searching…";
  $("preview").src = URL.createObjectURL(file);
  $("query").hidden = false;
  const form = new FormData();
  form.append("image", file, file.name || "photo.jpg");
  form.append("k", "5");
  let body;
  try {
    const resp = await seesku.fetch("/v1/search", { method: "POST", body: form, headers: { "X-Channel": "web" } });
    body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = `Search failed: ${err.message}`;
    lastFailed = err instanceof NeedsKey ? file : null;
    return;
  }
  lastFailed = null;
  render(body);
}

function render(body) {
  const list = $("matches");
  list.replaceChildren();
  body.matches.forEach((m, i) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    seesku.showImage(img, m.thumbnail_url).catch(() => {});
    img.alt = `Catalogue photo of ${m.name}`;
    li.append(img, text("div", `${i + 1}. ${m.name}`, "name"),
      text("div", `${m.category.fine} · ${m.category.coarse}`, "muted"),
      text("div", `score ${m.score.toFixed(3)} (visual ${m.visual_score.toFixed(3)})`, "muted"));
    li.dataset.productId = m.product_id;
    list.append(li);
  });
  // matched false: the first product is not judged to be the photographed one; the list is what looks alike.
  $("results-title").textContent = body.matched ? "Matching products" : "No exact match — similar products";
  $("results-title").hidden = false;
  const top = body.categories.fine[0];
  $("categories").replaceChildren(text("p", top ? `Looks like: ${top.name} (${pct(top.probability)})` : ""));
  $("status").textContent = !body.matches.length
    ? "No matching products in the catalogue."
    : body.matched
      ? `${body.matches.length} matching products; best: ${body.matches[0].name}`
      : `No exact match — ${body.matches.length} similar products`;
}

let lastFailed = null;  // a photo refused for want of a key is sent again once a key is entered
$("photo").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // so the same photo can be chosen again
  if (file) search(file);
});
document.addEventListener("seesku-key", () => { if (lastFailed) search(lastFailed); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (file) search(file);
});
