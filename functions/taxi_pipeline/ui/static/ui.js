// taxi-pipeline web UI: refreshes the live part of a page while runs are in flight, and posts
// the forms as JSON (the API takes nothing else). No framework, no external asset.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "taxi-pipeline-ui-token";
let refreshing = false;
// After a submit the new runs may take a moment to show as active: refresh a few times anyway.
let pendingRefreshes = 0;

function liveRegion() {
  return document.querySelector("[data-live]");
}

async function refresh() {
  const live = liveRegion();
  if (!live) {
    refreshing = false;
    return;
  }
  try {
    const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
    if (response.ok) {
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("[data-live]");
      if (fresh) {
        live.replaceChildren(...fresh.childNodes);
        live.dataset.active = fresh.dataset.active;
      }
    }
  } catch (error) {
    console.warn("refresh failed", error);
  }
  if (liveRegion().dataset.active === "true" || pendingRefreshes > 0) {
    if (pendingRefreshes > 0) pendingRefreshes -= 1;
    window.setTimeout(refresh, REFRESH_MS);
  } else {
    refreshing = false;
  }
}

function startRefreshing(extra) {
  pendingRefreshes = Math.max(pendingRefreshes, extra || 0);
  if (!refreshing) {
    refreshing = true;
    window.setTimeout(refresh, REFRESH_MS);
  }
}

function formBody(form) {
  const body = {};
  for (const element of form.elements) {
    if (!element.name || element.name.startsWith("_")) continue;
    if (element.type === "checkbox") body[element.name] = element.checked;
    else body[element.name] = element.value;
  }
  return body;
}

function describe(kind, answer) {
  if (kind === "run") return `run ${answer.run_id} ${answer.state}`;
  if (kind === "backfill") {
    const skipped = answer.already_loaded.length ? `, ${answer.already_loaded.length} already loaded` : "";
    const runs = answer.runs.length === 1 ? "1 run" : `${answer.runs.length} runs`;
    return `backfill ${answer.backfill_id}: ${runs} ${answer.state}${skipped}`;
  }
  return answer.message || "done";
}

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const output = form.querySelector("output.result");
  const button = form.querySelector("button[type=submit]");
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const tokenInput = form.querySelector("input[name=_token]");
  if (tokenInput) {
    headers.Authorization = `Bearer ${tokenInput.value}`;
    window.sessionStorage.setItem(TOKEN_KEY, tokenInput.value);
  }
  button.disabled = true;
  output.className = "result";
  output.textContent = "submitting…";
  try {
    // getAttribute: a form's `dataset` property is shadowed by its control named "dataset".
    const response = await fetch(form.getAttribute("data-api"), {
      method: "POST",
      headers,
      body: JSON.stringify(formBody(form)),
      credentials: "same-origin",
    });
    const answer = await response.json();
    if (response.status === 202) {
      output.className = "result ok";
      output.textContent = describe(form.getAttribute("data-kind"), answer);
      if (answer.url) {
        const link = document.createElement("a");
        link.href = answer.url;
        link.textContent = " open";
        output.append(link);
      }
      startRefreshing(5);
    } else {
      output.className = "result bad";
      output.textContent = answer.error || `HTTP ${response.status}`;
    }
  } catch (error) {
    output.className = "result bad";
    output.textContent = `could not reach the server: ${error}`;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = window.sessionStorage.getItem(TOKEN_KEY);
  for (const form of document.querySelectorAll("form[data-api]")) {
    form.addEventListener("submit", submit);
    const tokenInput = form.querySelector("input[name=_token]");
    if (tokenInput && saved) tokenInput.value = saved;
  }
  const live = liveRegion();
  if (live && live.dataset.active === "true") startRefreshing(0);
});
