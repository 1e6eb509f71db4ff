// Keys: create (the key shown once), change limits, budget, models and strategy, revoke,
// rotate; a budget bar per key.

import { h, replace, table, usd, when } from "./dom.js";

const LIMITS = ["budget_usd", "budget_period", "rpm", "ipm", "concurrency", "allowed_models",
                "strategy"];
let editing = null; // the key being edited, or null: the form creates

export function setup(api, status) {
  const form = document.getElementById("key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(api, form, status);
  });
  document.getElementById("key-cancel").addEventListener("click", () => edit(null));
  document.getElementById("secret-dismiss").addEventListener("click", () => showSecret(null));
  const copy = document.getElementById("secret-copy");
  copy.hidden = !navigator.clipboard;
  copy.addEventListener("click", () => navigator.clipboard.writeText(
    document.getElementById("secret-value").textContent).then(
    () => status("Copied."), () => status("Copying failed: select the key and copy it.")));
}

export function refresh(api, session, status) {
  return reload(api, status);
}

async function reload(api, status) {
  const [keys, budgets] = await Promise.all([api.get("/admin/keys"),
                                             api.get("/admin/budgets")]);
  const spent = Object.fromEntries(budgets.data.map((b) => [b.key_id, b]));
  const columns = [
    ["Name", (k) => h("span", {}, k.name, h("br"), h("small", { class: "note" }, k.id))],
    ["Tenant", (k) => k.tenant],
    ["Key", (k) => h("code", {}, k.hint)],
    ["State", (k) => h("span", { class: k.active ? "ok" : "bad" },
      k.active ? "active" : `revoked ${when(k.revoked_at)}`)],
    ["Budget", (k) => budgetBar(k, spent[k.id])],
    ["Limits", limits],
    ["Models", (k) => (k.allowed_models ? k.allowed_models.join(", ") : "all")],
    ["Strategy", (k) => k.strategy || "model's"],
    ["Actions", (k) => actions(api, k, status)],
  ];
  replace(document.getElementById("keys-body"),
    table("Every key, revoked ones too", columns, keys.data));
}

function budgetBar(key, use) {
  if (key.budget_usd === null) return "none";
  const spentUsd = use ? Number(use.spent_usd) : 0;
  const text = `${usd(spentUsd)} of ${usd(key.budget_usd)} (${use ? use.period : key.budget_period})`;
  return h("span", {}, h("meter", { min: 0, max: Number(key.budget_usd) || 1,
    value: spentUsd, high: (Number(key.budget_usd) || 1) * 0.8, "aria-label": text }),
    " ", text);
}

function limits(key) {
  const parts = [["rpm", key.rpm], ["ipm", key.ipm], ["concurrent", key.concurrency]]
    .filter(([, v]) => v !== null).map(([name, v]) => `${v} ${name}`);
  return parts.length ? parts.join(", ") : "none";
}

function actions(api, key, status) {
  if (!key.active) return "";
  const named = (verb) => `${verb} ${key.name} (${key.id})`;
  return h("div", { class: "actions" },
    h("button", { type: "button", "aria-label": named("Edit"), onclick: () => edit(key) },
      "Edit"),
    h("button", { type: "button", "aria-label": named("Rotate"), onclick: () =>
      act(api, status, `Rotate ${key.name}? Its current secret stops working.`,
        `/admin/keys/${key.id}/rotate`, (body) =>
          showSecret(`New secret for ${key.name} (${key.id}). Shown once: store it now.`,
            body.key)) }, "Rotate"),
    h("button", { type: "button", class: "danger", "aria-label": named("Revoke"), onclick: () =>
      act(api, status, `Revoke ${key.name}? It stops working at once.`,
        `/admin/keys/${key.id}/revoke`, () => status(`Revoked ${key.name}.`)) }, "Revoke"));
}

async function act(api, status, question, path, done) {
  if (!window.confirm(question)) return;
  try {
    done(await api.post(path));
  } catch (error) {
    status(error.message);
  }
  await reload(api, status).catch((error) => status(error.message));
}

function edit(key) {
  editing = key;
  const form = document.getElementById("key-form");
  form.reset();
  for (const name of ["name", "tenant"]) {
    form.elements.namedItem(name).disabled = key !== null;
    form.elements.namedItem(name).required = name === "name" && key === null;
  }
  document.getElementById("key-form-title").textContent =
    key ? `Change ${key.name} (${key.id})` : "Create a key";
  document.getElementById("key-submit").textContent = key ? "Save changes" : "Create key";
  document.getElementById("key-cancel").hidden = key === null;
  document.getElementById("key-error").textContent = "";
  if (key) {
    form.elements.namedItem("name").value = key.name;
    form.elements.namedItem("tenant").value = key.tenant;
    for (const name of LIMITS) {
      const value = key[name];
      form.elements.namedItem(name).value = Array.isArray(value) ? value.join(", ")
        : value ?? "";
    }
    form.elements.namedItem("budget_usd").focus();
  }
}

// The form's settings as the admin API takes them; empty means "none" (cleared on a change,
// left out on a create).
function settings(form) {
  const body = {};
  for (const name of LIMITS) {
    const raw = form.elements.namedItem(name).value.trim();
    let value = raw === "" ? null : raw;
    if (value !== null && ["rpm", "ipm", "concurrency"].includes(name)) {
      value = /^[0-9]+$/.test(raw) ? Number(raw) : raw;
    }
    if (value !== null && name === "allowed_models") {
      value = raw.split(",").map((m) => m.trim()).filter(Boolean);
    }
    if (value !== null || editing) body[name] = value;
  }
  return body;
}

async function submit(api, form, status) {
  const error = document.getElementById("key-error");
  error.textContent = "";
  const body = settings(form);
  try {
    if (editing) {
      await api.patch(`/admin/keys/${editing.id}`, body);
      status(`Saved ${editing.name}.`);
    } else {
      body.name = form.elements.namedItem("name").value.trim();
      const tenant = form.elements.namedItem("tenant").value.trim();
      if (tenant) body.tenant = tenant;
      const created = await api.post("/admin/keys", body);
      showSecret(`Created ${created.name} (${created.id}). Its key is shown once: store it ` +
                 "now.", created.key);
    }
    edit(null);
    await reload(api, status);
  } catch (failure) {
    error.textContent = failure.param ? `${failure.param}: ${failure.message}` : failure.message;
  }
}

function showSecret(text, value) {
  const box = document.getElementById("secret");
  box.hidden = text === null;
  document.getElementById("secret-text").textContent = text || "";
  document.getElementById("secret-value").textContent = value || "";
  if (text !== null) document.getElementById("secret-dismiss").focus();
}
