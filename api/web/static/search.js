// Camera search: send the photo to POST /v1/search from the web channel and show the matches. With
// objects=true the answer also holds each product found in the photo: its box is drawn over the photo, and
// tapping a box shows that product's matches instead of the whole photo's.
"use strict";
const $ = (id) => document.getElementById(id);
const pct = (p) => `${(100 * p).toFixed(1)} %`;

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

let withObjects = true;  // until the service says it has no detector

async function search(file) {
  $("error").textContent = "";
  $("status").textContent = "Searching…";
  $("preview").src = URL.createObjectURL(file);
  $("query").hidden = false;
  const form = new FormData();
  form.append("image", file, file.name || "photo.jpg");
  form.append("k", "5");
  if (withObjects) form.append("objects", "true");
  let body;
  try {
    const resp = await seesku.fetch("/v1/search", { method: "POST", body: form, headers: { "X-Channel": "web" } });
    body = await resp.json();
    if (resp.status === 503 && withObjects && body.error && body.error.code === "detector_unavailable") {
      withObjects = false;
      return search(file);
    }
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
  lastAnswer = body;
  drawBoxes(body.objects || []);
  showMatches(body, null);
}

// Boxes are fractions of the upright photo, which is how the browser shows it (EXIF applied), so they sit
// on the preview whatever its size.
function drawBoxes(objects) {
  const holder = $("photo-boxes");
  holder.querySelectorAll(".box").forEach((b) => b.remove());
  objects.forEach((o, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "box";
    Object.assign(b.style, {
      left: `${100 * o.box.x0}%`, top: `${100 * o.box.y0}%`,
      width: `${100 * (o.box.x1 - o.box.x0)}%`, height: `${100 * (o.box.y1 - o.box.y0)}%`,
    });
    const first = o.matches[0];
    b.setAttribute("aria-label", `Product ${i + 1}${first ? `: ${first.name}` : ""}`);
    b.setAttribute("aria-pressed", "false");
    b.dataset.object = String(i);
    b.append(text("span", String(i + 1)));
    b.addEventListener("click", () => showMatches(o, i));
    holder.append(b);
  });
  const hint = $("objects-hint");
  hint.hidden = objects.length === 0;
  hint.textContent = objects.length === 1
    ? "1 product found in the photo: tap its box to see its matches."
    : `${objects.length} products found in the photo: tap a box to see that product's matches.`;
}

// `answer`: the whole photo's answer (which = null) or one object's (which = its position).
function showMatches(answer, which) {
  document.querySelectorAll("#photo-boxes .box").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.object === String(which))));
  $("whole-photo").hidden = which === null;
  const list = $("matches");
  list.replaceChildren();
  answer.matches.forEach((m, i) => {
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
  const what = which === null ? "" : ` for product ${which + 1}`;
  $("results-title").textContent = (answer.matched ? "Matching products" : "No exact match — similar products") + what;
  $("results-title").hidden = false;
  const top = answer.categories.fine[0];
  $("categories").replaceChildren(text("p", top ? `Looks like: ${top.name} (${pct(top.probability)})` : ""));
  $("status").textContent = !answer.matches.length
    ? "No matching products in the catalogue."
    : answer.matched
      ? `${answer.matches.length} matching products${what}; best: ${answer.matches[0].name}`
      : `No exact match${what} — ${answer.matches.length} similar products`;
}

let lastAnswer = null;
$("whole-photo").addEventListener("click", () => { if (lastAnswer) showMatches(lastAnswer, null); });
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
