// The console's entry point: sign in with a key, tabs, and the refresh loop.
// The key lives in this tab's sessionStorage and travels only in the Authorization header.

import { Api } from "./api.js";
import * as keys from "./keys.js";
import * as requests from "./requests.js";
import * as routes from "./routes.js";
import * as spend from "./spend.js";

const STORED = "switchyard-console-key";
const NOTE = "switchyard-console-note"; // why the last session ended, shown at sign-in
// tab -> how often it refreshes itself while shown (ms)
const PANELS = {
  routes: { module: routes, every: 2000 },
  keys: { module: keys, every: 15000 },
  spend: { module: spend, every: 60000 },
  requests: { module: requests, every: 3000 },
};

const byId = (id) => document.getElementById(id);
let session = null; // {api, admin}
let active = null;
let lastRefresh = 0;
let busy = false;
let statusTimer = null;

function status(text) {
  byId("status").textContent = text;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { byId("status").textContent = ""; }, 6000);
}

// Admin or tenant: tenant keys start with sy-, so each is tried first where it likely works
// (no needless 401 in the log); the other is the fallback.
async function identify(key) {
  const api = new Api(key);
  const checks = { admin: () => api.get("/admin/keys"),
                   tenant: () => api.get("/v1/activity", { limit: 1 }) };
  const order = key.startsWith("sy-") ? ["tenant", "admin"] : ["admin", "tenant"];
  let disabled = false;
  for (const role of order) {
    try {
      await checks[role]();
      return { api, admin: role === "admin" };
    } catch (error) {
      if (error.code === "admin_api_disabled") disabled = true;
      else if (error.status !== 401) throw error;
    }
  }
  throw new Error(disabled
    ? "Not a tenant key, and this server's admin view is off (no admin key is configured)."
    : "That key is not valid here (wrong, revoked or rotated).");
}

async function signIn(key) {
  session = await identify(key);
  sessionStorage.setItem(STORED, key);
  byId("login").hidden = true;
  byId("console").hidden = false;
  byId("logout").hidden = false;
  byId("who").textContent = session.admin ? "Signed in with the admin key"
    : "Signed in with a tenant key: its own requests and spend";
  for (const tab of document.querySelectorAll("[role=tab][data-admin]")) {
    tab.hidden = !session.admin;
  }
  spend.setup(session.api, session, status);
  if (session.admin) keys.setup(session.api, status);
  select(session.admin ? "routes" : "spend", false);
}

// A fresh page: nothing of the last session (its key, its listeners) stays behind.
function signOut(reason) {
  sessionStorage.removeItem(STORED);
  if (reason) sessionStorage.setItem(NOTE, reason);
  window.location.reload();
}

function tabs() {
  return [...document.querySelectorAll("[role=tab]")].filter((tab) => !tab.hidden);
}

function select(name, focus = true) {
  active = name;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    byId(tab.getAttribute("aria-controls")).hidden = !on;
    if (on && focus) tab.focus();
  }
  lastRefresh = 0;
  tick();
}

function onTabKey(event) {
  const list = tabs();
  const at = list.indexOf(event.target);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: list.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  select(list[(to + list.length) % list.length].id.slice(4));
}

async function tick() {
  if (!session || busy || document.visibilityState !== "visible") return;
  const panel = PANELS[active];
  if (Date.now() - lastRefresh < panel.every) return;
  busy = true;
  try {
    await panel.module.refresh(session.api, session, status);
    lastRefresh = Date.now();
  } catch (error) {
    if (error.status === 401) signOut("The key stopped working: sign in again.");
    else status(`Could not refresh: ${error.message}`);
    lastRefresh = Date.now();
  } finally {
    busy = false;
  }
}

function start() {
  byId("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = byId("login-key");
    byId("login-error").textContent = "";
    try {
      await signIn(field.value.trim());
      field.value = "";
    } catch (error) {
      byId("login-error").textContent = error.message;
      field.focus();
    }
  });
  byId("logout").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => select(tab.id.slice(4)));
    tab.addEventListener("keydown", onTabKey);
  }
  setInterval(tick, 500);
  document.addEventListener("visibilitychange", tick);
  byId("login-error").textContent = sessionStorage.getItem(NOTE) || "";
  sessionStorage.removeItem(NOTE);
  const stored = sessionStorage.getItem(STORED);
  if (stored) signIn(stored).catch(() => sessionStorage.removeItem(STORED));
  else byId("login-key").focus();
}

start();
