// Spend: billed and upstream dollars, and what routing saved against each model's reference
// route, per day, model, provider and key (a tenant: its own, per day and model); CSV export
// of the same report `switchyard usage --csv` prints.

import { barChart } from "./chart.js";
import { h, replace, usd } from "./dom.js";

const SERIES = ["billed", "upstream", "saved by routing"];

export function setup(api, session, status) {
  const form = document.getElementById("spend-form");
  const to = new Date();
  const from = new Date(to.getTime() - 29 * 86400 * 1000);
  form.elements.namedItem("from").value = from.toISOString().slice(0, 10);
  form.elements.namedItem("to").value = to.toISOString().slice(0, 10);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    refresh(api, session).catch((error) => status(error.message));
  });
  document.getElementById("spend-csv").addEventListener("click", () =>
    download(api, session).catch((error) => status(error.message)));
}

function range() {
  const form = document.getElementById("spend-form");
  return { from: form.elements.namedItem("from").value || null,
           to: form.elements.namedItem("to").value || null };
}

function path(session) {
  return session.admin ? "/admin/usage" : "/v1/usage";
}

export async function refresh(api, session) {
  const error = document.getElementById("spend-error");
  error.textContent = "";
  const groups = session.admin ? ["day", "model", "provider", "key"] : ["day", "model"];
  let reports;
  try {
    reports = await Promise.all(groups.map((group) =>
      api.get(path(session), { ...range(), group_by: group })));
  } catch (failure) {
    error.textContent = failure.param ? `${failure.param}: ${failure.message}` : failure.message;
    return;
  }
  const names = session.admin ? await keyNames(api) : {};
  const charts = groups.map((group, i) => barChart(`Per ${group}`, SERIES,
    reports[i].data.map((row) => ({
      label: group === "key" ? names[row.key] || row.key : row[group] || "(none)",
      values: [Number(row.billed_usd), Number(row.upstream_usd), Number(row.saved_usd)],
    }))));
  replace(document.getElementById("spend-body"), ...charts);
  total(reports[0].data);
}

async function keyNames(api) {
  const keys = await api.get("/admin/keys");
  return Object.fromEntries(keys.data.map((k) => [k.id, k.name]));
}

function total(rows) {
  const sum = (field) => rows.reduce((acc, row) => acc + Number(row[field]), 0);
  const reference = sum("reference_usd");
  const saved = sum("saved_usd");
  const share = reference > 0 ? ` (${((saved / reference) * 100).toFixed(1)}%)` : "";
  replace(document.getElementById("spend-total"),
    h("span", {}, `Billed ${usd(sum("billed_usd"))}, upstream ${usd(sum("upstream_usd"))}; `,
      `routing saved ${usd(saved)}${share} against each model's reference route ` +
      `(${usd(reference)}) over ${sum("requests")} requests.`));
}

async function download(api, session) {
  const groups = session.admin ? "day,model,provider,key" : "day,model";
  const text = await api.text(path(session), { ...range(), group_by: groups,
                                               format: "csv" });
  const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
                        download: `switchyard-usage-${range().from}-${range().to}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
