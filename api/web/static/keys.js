// API keys in the pages. The localhost demo needs none; any other server does (see README, "API keys").
// When the API answers 401 or 403 the page shows a key field; the key is kept for this browser tab only
// (sessionStorage: never a cookie, never in a URL) and sent as X-API-Key. Photos and downloads come through
// the same fetch, since an <img src> or a link cannot carry a header.
"use strict";
const KEY_NAME = "seesku-api-key";

class NeedsKey extends Error {}

const seesku = {
  key: () => sessionStorage.getItem(KEY_NAME),

  async fetch(url, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = seesku.key();
    if (key) headers.set("X-API-Key", key);
    const resp = await fetch(url, { ...options, headers });
    if (resp.status === 401 || resp.status === 403) {
      let message = `HTTP ${resp.status}`;
      try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
      seesku.askForKey(message);
      throw new NeedsKey(key ? `this API key was refused (${message})` : "this server needs an API key: enter it above, then try again");
    }
    return resp;
  },

  // An image from the API: a plain src when no key is in use, otherwise fetched with the key.
  async showImage(img, url) {
    if (!seesku.key()) { img.src = url; return; }
    const resp = await seesku.fetch(url);
    img.src = URL.createObjectURL(await resp.blob());
  },

  // A download link to the API that works with a key too.
  linkDownload(a, url, filename) {
    a.href = url;
    a.onclick = async (e) => {
      if (!seesku.key()) return;  // the browser follows the link itself
      e.preventDefault();
      const blob = await (await seesku.fetch(url)).blob();
      const tmp = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: filename });
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
    };
  },

  askForKey(reason) {
    const form = document.getElementById("key-form");
    form.hidden = false;
    document.getElementById("key-reason").textContent = reason;
    document.getElementById("api-key").focus();
  },
};

// The key field, the same on every page: hidden at the top of <main> until the API asks for a key.
document.querySelector("main").insertAdjacentHTML("afterbegin", `
  <form id="key-form" class="key" hidden>
    <label for="api-key">API key</label>
    <input id="api-key" type="password" autocomplete="off" aria-describedby="key-reason">
    <button type="submit">Use key</button>
    <p class="hint" id="key-reason"></p>
  </form>`);

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("api-key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_NAME, value);
  document.getElementById("api-key").value = "";
  e.target.hidden = true;
  document.dispatchEvent(new Event("seesku-key"));  // a page may retry what the missing key stopped
});
