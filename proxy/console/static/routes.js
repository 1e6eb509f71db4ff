// Routes, live: every route per model with its prices, latencies, success, load and breaker,
// and the route each strategy would pick now, per tier.

import { h, replace, seconds, table, usd } from "./dom.js";

export async function refresh(api) {
  const report = await api.get("/admin/routes");
  replace(document.getElementById("routes-body"),
    ...report.data.map((model) => modelSection(model, report.strategies)));
}

function modelSection(model, strategies) {
  const tiers = model.tiers;
  const provider = Object.fromEntries(model.routes.map((r) => [r.id, r.provider]));
  const columns = [
    ["Route", (r) => h("span", {}, r.provider, h("br"),
      h("small", { class: "note" }, `${r.upstream_model} (${r.protocol})`))],
    ...tiers.map((tier) => [tier, (r) => tierCell(r.tiers[tier])]),
    ["Success#", (r) => (r.outcomes ? `${(r.success_ratio * 100).toFixed(1)}% of ${r.outcomes}`
                                    : "no outcome yet")],
    ["In flight#", (r) => `${r.in_flight} · host ${r.host_in_flight}/${r.host_cap}`],
    ["Breaker", breaker],
  ];
  const picks = [
    ["Tier", (row) => row.tier],
    ...strategies.map((strategy) => [strategy, (row) => {
      const id = row.picks[strategy];
      return h("span", { class: strategy === model.default_strategy ? "pick" : null },
        id ? provider[id] : "–");
    }]),
  ];
  const pickRows = tiers.map((tier) => ({ tier, picks: model.picks[tier] }));
  return h("section", { "aria-label": model.model },
    h("h3", {}, model.model, " ", h("small", { class: "note" },
      `default strategy: ${model.default_strategy}`)),
    table(`${model.model}: routes`, columns, model.routes),
    table(`${model.model}: what each strategy picks now (one image)`, picks, pickRows));
}

function tierCell(tier) {
  if (!tier) return h("span", { class: "note" }, "–");
  const seen = tier.samples
    ? `p50 ${seconds(tier.p50_s)} · p95 ${seconds(tier.p95_s)} (${tier.samples})`
    : "no request yet";
  return h("span", {}, usd(tier.price_usd), h("br"), h("small", {}, seen), h("br"),
    h("small", { class: "note" },
      `router ${seconds(tier.expected_s)} · p95 ${seconds(tier.router_p95_s)}`));
}

function breaker(route) {
  const state = route.breaker.replace("_", " ");
  const css = route.breaker === "closed" && route.available ? "ok"
    : route.breaker === "open" ? "bad" : "warn";
  return h("span", {}, h("span", { class: css }, state),
    route.rest ? h("small", {}, h("br"), route.rest) : null);
}
