// Requests: the latest requests with outcome, provider, attempts, latency and cost; async
// jobs and batches with their progress. Never a prompt, never an image.

import { h, replace, table, usd, when } from "./dom.js";

export async function refresh(api, session) {
  const [activity, keys] = await Promise.all([
    api.get(session.admin ? "/admin/activity" : "/v1/activity", { limit: 50 }),
    session.admin ? api.get("/admin/keys") : Promise.resolve({ data: [] }),
  ]);
  const names = Object.fromEntries(keys.data.map((k) => [k.id, k.name]));
  const key = (row) => names[row.key_id] || row.key_id;
  const requests = [
    ["When", (r) => when(r.created_at)],
    ...(session.admin ? [["Key", key]] : []),
    ["Model", (r) => r.model],
    ["Outcome", (r) => h("span", { class: r.outcome === "success" ? "ok" : "bad" },
      r.outcome, r.failure && r.failure !== r.outcome ? ` (${r.failure})` : "")],
    ["Provider", (r) => r.provider || "–"],
    ["Tier", (r) => r.tier],
    ["Images#", (r) => r.images],
    ["Attempts#", (r) => r.attempts],
    ["Latency#", (r) => `${(r.latency_ms / 1000).toFixed(2)} s`],
    ["Billed#", (r) => usd(r.billed_usd)],
    ["Upstream#", (r) => usd(r.upstream_usd)],
    ["Request id", (r) => h("code", {}, r.id)],
  ];
  const work = [
    ["Created", (w) => when(w.created_at)],
    ...(session.admin ? [["Key", key]] : []),
    ["Id", (w) => h("code", {}, w.id)],
    ["State", (w) => w.state],
    ["Progress", (w) => h("span", {}, h("progress", { max: w.total || 1, value: w.done,
      "aria-label": `${w.id}: ${w.done} of ${w.total} done` }),
      ` ${w.done}/${w.total}`, w.failed ? `, ${w.failed} failed` : "")],
  ];
  replace(document.getElementById("requests-body"),
    table("Latest requests", requests, activity.requests),
    h("h2", {}, "Async jobs"), table("Async jobs", work, activity.jobs),
    h("h2", {}, "Batches"), table("Batches", work, activity.batches));
}
