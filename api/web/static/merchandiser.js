// Merchandiser tagging: upload a zip as a tagging job, follow its progress, then show downloads and duplicates.
"use strict";
const $ = (id) => document.getElementById(id);

$("zip").addEventListener("change", () => { $("start").disabled = !$("zip").files.length; });

$("upload").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("zip").files[0];
  if (!file) return;
  $("error").textContent = "";
  $("start").disabled = true;
  try {
    const resp = await seesku.fetch("/v1/tagging/jobs", { method: "POST", body: file, headers: { "Content-Type": "application/zip" } });
    const job = await resp.json();
    if (!resp.ok) throw new Error(job.error ? job.error.message : `HTTP ${resp.status}`);
    follow(job);
  } catch (err) {
    $("error").textContent = `Upload refused: ${err.message}`;
    $("start").disabled = false;
  }
});

function show(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  $("progress").max = job.total || 1;
  $("progress").value = job.done;
  const eta = job.eta_s != null ? `, about ${Math.ceil(job.eta_s)} s left` : "";
  const rate = job.rate ? ` at ${job.rate.toFixed(1)} photos/s` : "";
  $("status").textContent = `${job.state}: ${job.done} of ${job.total} photos${rate}${eta}`;
}

async function follow(job) {
  show(job);
  while (job.state === "queued" || job.state === "running") {
    await new Promise((r) => setTimeout(r, 500));
    job = await (await seesku.fetch(`/v1/tagging/jobs/${job.id}`)).json();
    show(job);
  }
  $("start").disabled = false;
  if (job.state === "failed") { $("error").textContent = `Tagging failed: ${job.error}`; return; }
  seesku.linkDownload($("csv"), `${job.results_url}?format=csv`, `${job.id}.csv`);
  seesku.linkDownload($("jsonl"), `${job.results_url}?format=jsonl`, `${job.id}.jsonl`);
  $("downloads").hidden = false;
  if (job.state === "done") {
    $("review").href = `/review?job=${encodeURIComponent(job.id)}`;
    $("review-link").hidden = false;
  }
  $("status").textContent = `${job.state}: ${job.done} of ${job.total} photos tagged, ${job.duplicate_groups || 0} near-duplicate groups`;
  const { groups } = await (await seesku.fetch(`/v1/tagging/jobs/${job.id}/duplicates`)).json();
  const box = $("groups");
  box.replaceChildren();
  for (const g of groups) {
    const row = document.createElement("div");
    row.className = "group";
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", `Duplicate group ${g.id}: ${g.photos.length} photos`);
    g.photos.forEach((p, i) => {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      seesku.showImage(img, g.thumbnail_urls[i]).catch(() => {});
      img.alt = p;
      const cap = document.createElement("figcaption");
      cap.textContent = p;
      fig.append(img, cap);
      row.append(fig);
    });
    box.append(row);
  }
  $("duplicates").hidden = false;
}
