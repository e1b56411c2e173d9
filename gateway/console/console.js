// flashguard operators' console: plain JavaScript, no build step, no outside resources.
// Every data call carries the admin token as a Bearer header; the token stays in sessionStorage
// (this tab only). Values from the gateway are put in the page as text, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "flashguard.console.token";
  const POLL_MS = 2000;
  const RATE_WINDOW_MS = 60000;
  const DECISIONS = ["allow", "degrade", "deny"];

  let pollTimer = null;
  let running = false;
  let history = []; // [{t, decisions, reasons}] for the per-minute rates
  let listed = { user: new Set(), address: new Set() }; // blacklisted, for the top-refused buttons

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns, text: emptyText }))]));
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token(), Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (resp.status === 401) throw new AuthError("the gateway refused the token");
    if (!resp.ok) {
      const message = data && data.error ? data.error.code + ": " + data.error.message : resp.status + " " + resp.statusText;
      throw new Error(message);
    }
    return data;
  }

  // ---- formatting -------------------------------------------------------------------------

  const grouping = new Intl.NumberFormat("en-US");

  function count(n) {
    return grouping.format(n || 0);
  }

  function money(minor) {
    if (minor === null || minor === undefined) return "—";
    const sign = minor < 0 ? "-" : "";
    const abs = Math.abs(minor);
    const cents = String(abs % 100).padStart(2, "0");
    return sign + grouping.format(Math.floor(abs / 100)) + "." + cents;
  }

  function perMinute(n) {
    if (n === null) return "—";
    return n >= 100 ? grouping.format(Math.round(n)) : n.toFixed(1);
  }

  function time(unix) {
    return unix === null || unix === undefined ? null : new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  function scopeText(scope) {
    const entries = Object.entries(scope || {});
    return entries.length ? entries.map(([k, v]) => k + "=" + v).join(", ") : "every SKU";
  }

  // ---- rates -------------------------------------------------------------------------------

  function remember(data) {
    const now = Date.now();
    history.push({ t: now, decisions: data.decisions, reasons: data.reasons });
    while (history.length > 2 && now - history[1].t >= RATE_WINDOW_MS) history.shift();
  }

  function rate(field, key) {
    if (history.length < 2) return null;
    const first = history[0];
    const last = history[history.length - 1];
    const minutes = (last.t - first.t) / 60000;
    if (minutes <= 0) return null;
    return Math.max(0, ((last[field][key] || 0) - (first[field][key] || 0)) / minutes);
  }

  // ---- rendering ---------------------------------------------------------------------------

  function renderDecisions(data) {
    const total = DECISIONS.reduce((s, d) => s + (data.decisions[d] || 0), 0);
    const cards = [el("div", { class: "stat" },
      el("div", { class: "label", text: "checks" }),
      el("div", { class: "value", text: count(total) }),
      el("div", { class: "sub", text: "gateway clock " + (time(data.now) || "") }))];
    for (const d of DECISIONS) {
      const n = data.decisions[d] || 0;
      const share = total ? ((100 * n) / total).toFixed(1) + "%" : "—";
      cards.push(el("div", { class: "stat " + d, "data-decision": d },
        el("div", { class: "label", text: d }),
        el("div", { class: "value", text: count(n) }),
        el("div", { class: "sub", text: share + " · " + perMinute(rate("decisions", d)) + " / min" })));
    }
    $("decision-cards").replaceChildren(...cards);
  }

  function renderActivities(data) {
    const rows = data.activities.map((a) => {
      const budget = a.budget;
      const pct = (v) => (budget ? Math.min(100, (100 * v) / budget) : 0) + "%";
      const state = a.fused
        ? el("span", { class: "badge fused", text: "fused" })
        : !a.active
          ? el("span", { class: "badge inactive", text: "inactive" })
          : el("span", { class: "badge ok", text: budget === null ? "no budget" : "open" });
      const spent = el("span", { class: "spent", title: "spent " + money(a.spent) });
      const held = el("span", { class: "held", title: "held " + money(a.held) });
      spent.style.width = pct(a.spent);
      held.style.width = pct(a.held);
      const span = [time(a.starts_at) && "from " + time(a.starts_at), time(a.ends_at) && "until " + time(a.ends_at)].filter(Boolean).join(" ");
      return el("tr", { class: a.fused ? "fused" : "", "data-activity": a.activity_id, "data-fused": String(a.fused) },
        el("td", {}, el("span", { class: "mono", text: a.activity_id }), span ? el("div", { class: "muted small", text: span }) : null),
        el("td", {}, state),
        el("td", {}, budget === null ? el("span", { class: "muted small", text: "no budget set" }) : el("div", { class: "bar" }, spent, held)),
        el("td", { class: "num", text: money(a.spent) }),
        el("td", { class: "num", text: money(a.held) }),
        el("td", { class: "num", text: money(a.remaining) }),
        el("td", { class: "num", text: money(budget) }));
    });
    fill($("activities").tBodies[0], rows, 7, "no activities configured");
  }

  function renderReasons(data) {
    const entries = Object.entries(data.reasons).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const max = entries.length ? entries[0][1] : 0;
    const rows = entries.map(([code, n]) => {
      const fillBar = el("span", { class: "reason" });
      fillBar.style.width = (max ? (100 * n) / max : 0) + "%";
      return el("tr", { "data-reason": code },
        el("td", { class: "mono", text: code }),
        el("td", { class: "num", text: count(n) }),
        el("td", { class: "num", text: perMinute(rate("reasons", code)) }),
        el("td", {}, el("div", { class: "bar" }, fillBar)));
    });
    fill($("reasons").tBodies[0], rows, 4, "no refusals yet");
  }

  function foldPath(path) {
    return path.split("/").map((p) => p.trim().split(/\s+/).join(" ").toLowerCase()).join("/").replace(/\/+$/, "");
  }

  function isListed(kind, value) {
    if (kind !== "address") return listed.user.has(value);
    // An address entry is a region path prefix: it covers every path under it.
    const path = foldPath(value);
    for (const entry of listed.address) {
      const prefix = foldPath(entry);
      if (path === prefix || path.startsWith(prefix + "/")) return true;
    }
    return false;
  }

  function blacklistButton(kind, value) {
    if (isListed(kind, value)) return el("span", { class: "badge listed", text: "blacklisted" });
    return el("button", {
      type: "button", class: "danger", text: "Blacklist", title: "add " + value + " to the " + kind + " blacklist",
      onclick: () => changeList("PUT", "blacklist", kind, value, true),
    });
  }

  function renderTop(data) {
    const users = data.top_refused_users.map((u) => el("tr", {},
      el("td", { class: "mono", text: u.user_id }),
      el("td", { class: "num", text: count(u.refused) }),
      el("td", { class: "num" }, blacklistButton("user", u.user_id))));
    fill($("top-users").tBodies[0], users, 3, "no refused orders yet");
    const addresses = data.top_refused_addresses.map((a) => el("tr", {},
      el("td", { class: "mono", text: a.address }),
      el("td", { class: "num", text: count(a.refused) }),
      el("td", { class: "num" }, blacklistButton("address", a.address))));
    fill($("top-addresses").tBodies[0], addresses, 3, "no refused orders with an address yet");
  }

  function renderRules(data) {
    const rows = data.rules.map((r) => el("tr", { "data-rule": r.rule_id },
      el("td", { class: "mono", text: r.rule_id }),
      el("td", {}, el("span", { class: "badge " + r.mode, text: r.mode })),
      el("td", { class: "mono", text: r.subject }),
      el("td", { text: scopeText(r.scope) }),
      el("td", { text: String(r.window) }),
      el("td", { class: "num", text: count(r.max_quantity) }),
      el("td", { class: "num", text: count(r.limit) }),
      el("td", { class: "num", text: count(r.shadow_hits) })));
    fill($("rules").tBodies[0], rows, 8, "no risk rules configured");
  }

  function renderLists(data) {
    const boxes = [];
    for (const name of ["blacklist", "whitelist"]) {
      const doc = data.lists[name] || {};
      const kinds = [];
      for (const kind of ["user", "device", "phone", "address", "discount"]) {
        const values = doc[kind] || [];
        const chips = values.map((v) => el("span", { class: "chip", "data-value": v },
          el("span", { class: "mono", text: v }),
          el("button", { type: "button", title: "remove " + v, "aria-label": "remove " + v, text: "×",
            onclick: () => changeList("DELETE", name, kind, v, false) })));
        kinds.push(el("div", { class: "kind" },
          el("span", { class: "kindname", text: kind }),
          el("div", { class: "chips" }, ...(chips.length ? chips : [el("span", { class: "muted small", text: "—" })]))));
      }
      boxes.push(el("div", { class: "listbox", id: "list-" + name }, el("h3", { text: name }), ...kinds));
    }
    $("lists").replaceChildren(...boxes);
    const black = data.lists.blacklist || {};
    listed = { user: new Set(black.user || []), address: new Set(black.address || []) };
  }

  function renderSettings(data) {
    const s = data.settings;
    const input = $("multiplier");
    if (document.activeElement !== input && input.dataset.dirty !== "true") input.value = String(s.risk_multiplier);
    input.dataset.current = String(s.risk_multiplier);
    const shown = ["hold_ttl", "unknown", "release_on_cancel", "locale"];
    const items = [];
    for (const k of shown) items.push(el("dt", { text: k }), el("dd", { text: String(s[k]) }));
    $("settings").replaceChildren(...items);
  }

  function render(data) {
    remember(data);
    renderLists(data); // first: the top-refused buttons read the blacklist
    renderDecisions(data);
    renderActivities(data);
    renderReasons(data);
    renderTop(data);
    renderRules(data);
    renderSettings(data);
  }

  // ---- status, polling, sign-in ------------------------------------------------------------

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", Boolean(isError));
  }

  async function refresh() {
    try {
      const data = await api("GET", "/v1/admin/overview");
      render(data);
      setStatus("updated " + new Date().toLocaleTimeString("en-GB"), false);
      return true;
    } catch (e) {
      if (e instanceof AuthError) {
        signOut("The gateway refused the token. Sign in again.");
        return false;
      }
      setStatus("cannot reach the gateway: " + e.message, true);
      return true;
    }
  }

  async function poll() {
    pollTimer = null;
    if (!running) return;
    await refresh();
    if (running) pollTimer = setTimeout(poll, POLL_MS);
  }

  function startPolling() {
    running = true;
    history = [];
    if (pollTimer === null) poll();
  }

  function stopPolling() {
    running = false;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
  }

  function signOut(message) {
    stopPolling();
    sessionStorage.removeItem(TOKEN_KEY);
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStatus("", false);
    $("token").value = "";
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    const button = $("login-submit");
    button.disabled = true;
    $("login-error").textContent = "";
    sessionStorage.setItem(TOKEN_KEY, value);
    try {
      const data = await api("GET", "/v1/admin/overview");
      showApp();
      render(data);
      setStatus("updated " + new Date().toLocaleTimeString("en-GB"), false);
      startPolling();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("login-error").textContent = e instanceof AuthError ? "That token is not the gateway's admin token." : "Cannot reach the gateway: " + e.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---- changes -----------------------------------------------------------------------------

  async function saveMultiplier(event) {
    event.preventDefault();
    const input = $("multiplier");
    const status = $("multiplier-status");
    const value = input.value.trim();
    const button = $("multiplier-save");
    button.disabled = true;
    status.className = "small";
    status.textContent = "saving…";
    try {
      const settings = await api("PATCH", "/v1/admin/settings", { risk_multiplier: value });
      input.dataset.dirty = "false";
      input.value = String(settings.risk_multiplier);
      status.className = "small okmsg";
      status.textContent = "saved: risk_multiplier = " + settings.risk_multiplier;
      status.dataset.saved = String(settings.risk_multiplier);
      await refresh();
    } catch (e) {
      if (e instanceof AuthError) return signOut("The gateway refused the token. Sign in again.");
      status.className = "small error";
      status.textContent = "not saved: " + e.message;
    } finally {
      button.disabled = false;
    }
  }

  async function changeList(method, name, kind, value, adding) {
    const verb = adding ? "Add" : "Remove";
    if (!window.confirm(verb + " " + kind + " " + JSON.stringify(value) + (adding ? " to the " : " from the ") + name + "?")) return;
    const status = $("list-status");
    try {
      await api(method, "/v1/admin/lists/" + name + "/" + kind + "/" + encodeURIComponent(value));
      status.className = "small okmsg";
      status.textContent = (adding ? "added " : "removed ") + kind + " " + value + (adding ? " to " : " from ") + name;
      await refresh();
    } catch (e) {
      if (e instanceof AuthError) return signOut("The gateway refused the token. Sign in again.");
      status.className = "small error";
      status.textContent = verb.toLowerCase() + " failed: " + e.message;
    }
  }

  async function addListEntry(event) {
    event.preventDefault();
    const value = $("list-value").value.trim();
    if (!value) return;
    const status = $("list-status");
    try {
      await api("PUT", "/v1/admin/lists/" + $("list-name").value + "/" + $("list-kind").value + "/" + encodeURIComponent(value));
      status.className = "small okmsg";
      status.textContent = "added " + $("list-kind").value + " " + value + " to " + $("list-name").value;
      $("list-value").value = "";
      await refresh();
    } catch (e) {
      if (e instanceof AuthError) return signOut("The gateway refused the token. Sign in again.");
      status.className = "small error";
      status.textContent = "add failed: " + e.message;
    }
  }

  function start() {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut(""));
    $("multiplier-form").addEventListener("submit", saveMultiplier);
    $("multiplier").addEventListener("input", (e) => {
      e.target.dataset.dirty = String(e.target.value.trim() !== e.target.dataset.current);
    });
    $("list-form").addEventListener("submit", addListEntry);
    if (token()) {
      showApp();
      startPolling();
    } else {
      signOut("");
    }
  }

  start();
})();
