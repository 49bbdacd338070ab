// loradock portal: the small JavaScript layer. Every page works without it; with it, two things get better:
//
// 1. Live parts. An element with an id and `data-live="SECONDS"` is refreshed in place: the page's own URL is
//    fetched again and each live element is swapped for the element with the same id in the fresh page (one
//    template renders both, so there is no second rendering path). Forms are never inside a live part, so
//    nothing a user is typing is replaced. Refreshing stops once the fresh page has no live part left (a job
//    that ended). Without JavaScript, a <noscript> meta refresh reloads the page instead.
// 2. The playground streams. Its form is sent once per column to `/ui/playground/stream`, and each column's
//    answer grows as the server sends it (server-sent events: {"delta"}, then {"done"} or {"error"}).
"use strict";

function startLiveParts() {
  const live = document.querySelectorAll("[data-live][id]");
  if (!live.length) return;
  const periodMs = 1000 * Math.min(...Array.from(live, (el) => Number(el.dataset.live) || 5));
  async function refresh() {
    try {
      const reply = await fetch(window.location.href, { credentials: "same-origin", headers: { "X-Portal-Live": "1" } });
      if (!reply.ok) return setTimeout(refresh, periodMs);
      const fresh = new DOMParser().parseFromString(await reply.text(), "text/html");
      const stillLive = fresh.querySelector("[data-live][id]") !== null; // asked before its parts move into this page
      for (const el of document.querySelectorAll("[data-live][id]")) {
        const next = fresh.getElementById(el.id);
        if (next) el.replaceWith(document.adoptNode(next));
      }
      document.body.dataset.liveRefreshes = String(Number(document.body.dataset.liveRefreshes || 0) + 1);
      if (!stillLive) return; // nothing live any more (the job ended): stop
    } catch (err) {
      // the server restarted or the network dropped: try again at the next tick
    }
    setTimeout(refresh, periodMs);
  }
  setTimeout(refresh, periodMs);
}

function startPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const shared = new FormData(form);
    for (const column of form.querySelectorAll("[data-column]")) {
      const index = column.dataset.column;
      const target = (shared.get(`target_${index}`) || "").trim();
      const out = document.getElementById(`answer_${index}`);
      const served = document.getElementById(`served_${index}`);
      out.textContent = "";
      served.textContent = "";
      if (!target) continue;
      const body = new URLSearchParams();
      for (const [key, value] of shared.entries()) if (!key.startsWith("target_")) body.append(key, value);
      body.append("target", target);
      streamAnswer(body, out, served);
    }
  });
}

async function streamAnswer(body, out, served) {
  out.setAttribute("aria-busy", "true");
  served.textContent = "answering…";
  try {
    const reply = await fetch(`${document.body.dataset.prefix}/playground/stream`, {
      method: "POST", body, credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
    });
    if (!reply.ok || !reply.body) {
      served.textContent = `error: ${(await reply.text()).slice(0, 300)}`;
      return;
    }
    const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let cut;
      while ((cut = pending.indexOf("\n\n")) >= 0) {
        const line = pending.slice(0, cut).replace(/^data: /, "");
        pending = pending.slice(cut + 2);
        const event = JSON.parse(line);
        if (event.delta !== undefined) out.textContent += event.delta;
        else if (event.error !== undefined) served.textContent = `error: ${event.error}`;
        else if (event.done) served.textContent = event.served;
      }
    }
  } catch (err) {
    served.textContent = `error: the answer stopped (${err})`;
  } finally {
    out.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startLiveParts();
  startPlayground();
});
