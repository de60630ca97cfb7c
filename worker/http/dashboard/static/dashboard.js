// ab-autopromote dashboard: live updates over server-sent events, the operator token, confirmations, API calls.
// Our own code, no dependencies. Pages are rendered on the server; this script only re-fetches the fragment an
// event concerns, and never builds HTML from event or API data (textContent only).
(function () {
  "use strict";

  var TOKEN_KEY = "autopromote.apiToken";
  var API_URL = "/api/experiments/auto-promote";
  var ACTIVITY_MAX = 8;
  var seen = new Map(); // "type:promotionId" -> time seen, so a promotion reported twice shows once
  var timers = new Map(); // region id -> pending refresh timer
  var inflight = new Map(); // region id -> true while fetching
  var dirty = new Set(); // region ids asked to refresh again while a fetch was in flight

  function byId(id) { return document.getElementById(id); }

  // ------------------------------------------------------------------------------------------- token
  function getToken() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }
  function setToken(value) {
    try {
      if (value) { window.sessionStorage.setItem(TOKEN_KEY, value); } else { window.sessionStorage.removeItem(TOKEN_KEY); }
    } catch (e) { /* storage disabled: the token lives only until this page unloads */ }
    memoryToken = value;
    showTokenState();
  }
  var memoryToken = "";
  function token() { return getToken() || memoryToken; }
  function showTokenState() {
    var state = byId("token-state");
    if (state) { state.textContent = token() ? "set for this tab" : "not set"; }
  }
  function openTokenPanel(message) {
    var panel = byId("operator");
    if (panel) { panel.open = true; }
    if (message) { showStatus("error", message); }
    var input = byId("api-token");
    if (input) { input.focus(); }
  }

  function initToken() {
    var form = byId("token-form");
    var input = byId("api-token");
    var forget = byId("token-forget");
    if (!form || !input) { return; }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault(); // the token never goes into a URL or a form submission
      var value = input.value.trim();
      input.value = "";
      if (!value) { showStatus("error", "Enter a token first."); input.focus(); return; }
      setToken(value);
      showStatus("ok", "Token saved for this tab. Operator actions will use it.", [], 4000);
      var panel = byId("operator");
      if (panel) {
        panel.open = false;
        var summary = panel.querySelector("summary");
        if (summary) { summary.focus(); }
      }
    });
    if (forget) {
      forget.addEventListener("click", function () {
        setToken("");
        showStatus("ok", "Token forgotten.", [], 4000);
        input.focus();
      });
    }
    showTokenState();
  }

  // ------------------------------------------------------------------------------------- status area
  // Results show in a toast at the bottom of the window (the button may be far down the page) and are read
  // out through the polite live region.
  var hideTimer = 0;
  function showStatus(kind, title, items, hideAfterMs) {
    var box = byId("action-status");
    if (!box) { return; }
    window.clearTimeout(hideTimer);
    if (hideAfterMs) { hideTimer = window.setTimeout(function () { box.hidden = true; }, hideAfterMs); }
    box.textContent = "";
    box.dataset.kind = kind;
    var p = document.createElement("p");
    p.className = "toast-title";
    p.textContent = title;
    box.appendChild(p);
    if (items && items.length) {
      var ul = document.createElement("ul");
      items.forEach(function (text) {
        var li = document.createElement("li");
        li.textContent = String(text);
        ul.appendChild(li);
      });
      box.appendChild(ul);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.className = "btn toast-close";
    close.textContent = "Dismiss";
    close.addEventListener("click", function () { box.hidden = true; });
    box.appendChild(close);
    box.hidden = false;
    var announcer = byId("announcer");
    if (announcer) { announcer.textContent = [title].concat(items || []).join(" "); }
  }

  // ----------------------------------------------------------------------------------------- regions
  function regions() { return Array.prototype.slice.call(document.querySelectorAll("[data-fragment]")); }

  // Which kinds of change a region listens to (data-refresh-on) and, optionally, for which experiment.
  // "evaluation:new" is an evaluation of an experiment the page has no region for: a list must grow.
  function concerns(region, ev, kinds) {
    var wanted = (region.dataset.refreshOn || "").split(/\s+/);
    if (!kinds.some(function (k) { return wanted.indexOf(k) >= 0; })) { return false; }
    var scope = region.dataset.experiment;
    return scope === undefined || scope === ev.experimentName;
  }

  function kindsOf(ev, all) {
    var kinds = [ev.type];
    if (ev.type === "evaluation" && !all.some(function (r) { return r.dataset.experiment === ev.experimentName; })) {
      kinds.push("evaluation:new");
    }
    return kinds;
  }

  // A burst of events becomes one fetch, and a region is fetched at most about once a second however busy
  // the daemon is.
  var MIN_INTERVAL_MS = 1000;
  var lastFetch = new Map(); // region id -> time of the last fetch
  function scheduleRefresh(region, delay) {
    var id = region.id;
    if (timers.has(id)) { return; }
    var wait = delay === undefined ? 150 : delay;
    var since = Date.now() - (lastFetch.get(id) || 0);
    if (delay === undefined && since < MIN_INTERVAL_MS) { wait = Math.max(wait, MIN_INTERVAL_MS - since); }
    timers.set(id, window.setTimeout(function () {
      timers.delete(id);
      refresh(region);
    }, wait));
  }

  function refresh(region) {
    var id = region.id;
    if (!document.contains(region)) { return Promise.resolve(); } // replaced by a refresh of its parent
    if (inflight.get(id)) { dirty.add(id); return Promise.resolve(); }
    inflight.set(id, true);
    lastFetch.set(id, Date.now());
    region.setAttribute("aria-busy", "true");
    return fetch(region.dataset.fragment, { headers: { "Accept": "text/html" }, cache: "no-store",
                                            credentials: "same-origin" })
      .then(function (res) { return res.text().then(function (text) { return { ok: res.ok, status: res.status, text: text }; }); })
      .then(function (r) {
        if (r.status === 401) { signIn(); return; }
        if (!r.ok && r.status !== 404) { return; }
        var active = document.activeElement;
        var focusId = active && region.contains(active) ? active.id : "";
        var focusKey = active && region.contains(active) ? actionKey(active) : "";
        // Same-origin HTML rendered by our server, where every database value is escaped.
        region.innerHTML = r.text;
        restoreFocus(region, focusId, focusKey);
        region.dataset.version = String(Number(region.dataset.version || "0") + 1);
        document.dispatchEvent(new CustomEvent("dashboard:refreshed", { detail: { region: id } }));
      })
      .catch(function () { /* the next event or reconnect refreshes again */ })
      .then(function () {
        inflight.delete(id);
        region.removeAttribute("aria-busy");
        if (dirty.has(id)) { dirty.delete(id); scheduleRefresh(region, 50); }
      });
  }

  function actionKey(el) {
    if (!el || !el.dataset || !el.dataset.action) { return ""; }
    return el.dataset.action + "\u0000" + (el.dataset.experiment || "") + "\u0000" + (el.dataset.promotionId || "");
  }

  function restoreFocus(region, focusId, focusKey) {
    if (focusId) {
      var el = byId(focusId);
      if (el) { el.focus(); return; }
    }
    if (focusKey) {
      var buttons = region.querySelectorAll("button[data-action]");
      for (var i = 0; i < buttons.length; i++) {
        if (actionKey(buttons[i]) === focusKey) { buttons[i].focus(); return; }
      }
    }
  }

  // After an operator action: refresh what the matching event would (a check stores a decision but sends
  // no event; a promotion or rollback also arrives as an event, and the two refreshes coalesce).
  function refreshAfter(action, experimentName) {
    var ev = { type: action === "check" ? "evaluation" : action === "promote" ? "promotion" :
                     action === "pause" || action === "resume" ? "rollout" : "rollback",
               experimentName: experimentName };
    var all = regions();
    var kinds = kindsOf(ev, all);
    all.forEach(function (region) { if (concerns(region, ev, kinds)) { scheduleRefresh(region, 0); } });
  }

  // -------------------------------------------------------------------------------------- live events
  // The sign-in cookie expired or its token was revoked: sign in again and come back to this page.
  var leaving = false;
  function signIn() {
    if (leaving) { return; }
    leaving = true;
    setLive("off", "Live updates: signed out");
    window.location.assign("/sign-in?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }

  // An EventSource gives up for good on an error status (401, or 503 when the server has too many clients)
  // without telling which: ask a small fragment whether we are still signed in, else retry with backoff.
  function checkSignedIn() {
    return fetch("/fragments/experiments-summary", { headers: { "Accept": "text/html" }, cache: "no-store",
                                                      credentials: "same-origin" })
      .then(function (res) { if (res.status === 401) { signIn(); } })
      .catch(function () { /* offline: the retry tries again */ });
  }

  function setLive(state, text) {
    var box = byId("live-status");
    if (!box) { return; }
    box.dataset.state = state;
    var label = box.querySelector(".live-text");
    if (label) { label.textContent = text; }
  }

  function describe(ev) {
    var name = ev.experimentName ? "“" + ev.experimentName + "”" : "an experiment";
    var variant = ev.promotedVariantName || ev.variant || ev.rolledBackVariantName || "";
    switch (ev.type) {
      case "promotion": return "Promotion of " + name + (variant ? " (" + variant + ")" : "");
      case "rollback":
        if (phase(ev) === "rollback_requested") { return "Rollback requested for " + name; }
        return "Rollback of " + name + (ev.reason ? ": " + ev.reason : "");
      case "rollout": return "Rollout of " + name + " " + String(ev.event || "").replace(/^rollout[._]/, "").replace("_", " ") +
        (ev.treatmentShare !== undefined ? " (" + ev.treatmentShare + "%)" : "");
      case "evaluation":
        return "Evaluation of " + name + (ev.eligible === true ? ": eligible" : ev.eligible === false ? ": not eligible" : "");
      default: return ev.type + (ev.experimentName ? " · " + name : "");
    }
  }

  function addActivity(ev) {
    var list = byId("activity");
    if (!list) { return; }
    var placeholder = list.querySelector("[data-placeholder]");
    if (placeholder) { placeholder.remove(); }
    var li = document.createElement("li");
    li.dataset.type = ev.type;
    var time = document.createElement("time");
    var now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toISOString().slice(11, 19) + " UTC"; // the pages show UTC throughout
    li.appendChild(time);
    li.appendChild(document.createTextNode(" " + describe(ev)));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > ACTIVITY_MAX) { list.removeChild(list.lastChild); }
    if (ev.type !== "evaluation") {
      var announcer = byId("announcer");
      if (announcer) { announcer.textContent = describe(ev); }
    }
  }

  // The same change can arrive twice (the engine's commit hook and the database NOTIFY bridge), named
  // "promoted" by one and "promotion.promoted" by the other: compare the phase, not the wording.
  function phase(ev) {
    var e = String(ev.event || "").replace(/^promotion\./, "");
    if (e) { return e; }
    return ev.type === "promotion" ? "promoted" : ev.type === "rollback" ? "rolled_back" : ev.type;
  }

  function duplicate(ev) {
    if (!ev.promotionId || ev.type === "evaluation") { return false; }
    var key = phase(ev) + ":" + ev.promotionId;
    var now = Date.now();
    if (seen.has(key)) { return true; }
    seen.set(key, now);
    if (seen.size > 500) {
      seen.forEach(function (t, k) { if (now - t > 600000) { seen.delete(k); } });
    }
    return false;
  }

  function handleEvent(ev) {
    if (!ev || typeof ev.type !== "string" || ev.type.charAt(0) === "_") { return; }
    if (duplicate(ev)) { return; }
    addActivity(ev);
    var all = regions();
    var kinds = kindsOf(ev, all);
    all.forEach(function (region) { if (concerns(region, ev, kinds)) { scheduleRefresh(region); } });
  }

  var retryMs = 2000;
  var lostOnce = false;
  function connect() {
    if (!("EventSource" in window)) { setLive("off", "Live updates unavailable in this browser"); return; }
    var source = new EventSource("/events");
    source.onopen = function () {
      setLive("on", "Live updates: on");
      retryMs = 2000;
      if (lostOnce) { // events may have been missed while disconnected
        lostOnce = false;
        regions().forEach(function (region) { scheduleRefresh(region, 0); });
      }
    };
    source.onerror = function () {
      lostOnce = true;
      setLive("reconnecting", "Live updates: reconnecting…");
      if (source.readyState === EventSource.CLOSED && !leaving) {
        checkSignedIn();
        window.setTimeout(function () { if (!leaving) { connect(); } }, retryMs);
        retryMs = Math.min(retryMs * 2, 60000);
      }
    };
    source.onmessage = function (message) {
      var ev;
      try { ev = JSON.parse(message.data); } catch (e) { return; }
      handleEvent(ev);
    };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // ----------------------------------------------------------------------------------- confirmations
  var dialogOpener = null;
  function confirmAction(opts) {
    var dialog = byId("confirm-dialog");
    var reasonField = byId("reason-field");
    var reason = byId("confirm-reason");
    byId("confirm-title").textContent = opts.title;
    byId("confirm-text").textContent = opts.text;
    byId("confirm-ok").textContent = opts.confirmLabel;
    byId("confirm-ok").className = "btn " + (opts.danger ? "danger" : "primary");
    byId("confirm-reason-label").textContent = "Reason for the " + (opts.reasonFor || "rollback") +
      " (required, recorded in the audit log)";
    reasonField.hidden = !opts.needReason;
    reason.required = !!opts.needReason;
    reason.value = "";
    dialog.returnValue = "";
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function onClose() {
        dialog.removeEventListener("close", onClose);
        var ok = dialog.returnValue === "confirm";
        var text = reason.value.trim();
        if (dialogOpener && document.contains(dialogOpener)) { dialogOpener.focus(); }
        if (ok && opts.needReason && !text) { resolve(null); return; }
        resolve(ok ? { reason: text } : null);
      });
      dialog.showModal();
      (opts.needReason ? reason : byId("confirm-cancel")).focus();
    });
  }

  // ------------------------------------------------------------------------------------------ actions
  var ACTIONS = {
    check: function (b) {
      return { title: "Dry-run check", confirmLabel: "Run check",
               text: "Check whether “" + b.experiment + "” is eligible for promotion now. Nothing is promoted.",
               body: { action: "check", experimentName: b.experiment } };
    },
    promote: function (b) {
      return { title: "Promote the winner", confirmLabel: "Promote", danger: true,
               text: "Promote the winning variant of “" + b.experiment + "” now? The winner gets all traffic. " +
                     "Nothing happens if the experiment is not eligible.",
               body: { action: "promote", experimentName: b.experiment } };
    },
    rollback: function (b) {
      return { title: "Roll back the promotion", confirmLabel: "Roll back", danger: true, needReason: true,
               text: "Roll back the promotion of “" + b.experiment + "” and restore the previous traffic weights?",
               body: { action: "rollback", promotionId: b.promotionId } };
    },
    approve: function (b) {
      return { title: "Approve", confirmLabel: "Approve", danger: true,
               text: "Approve the pending approval of “" + b.experiment + "”? The decision is checked again now; " +
                     "if it is still eligible, it is promoted (or its rollout step starts) at once.",
               body: { action: "approve", approvalId: b.approvalId } };
    },
    decline: function (b) {
      return { title: "Decline", confirmLabel: "Decline", needReason: true, reasonFor: "decline",
               text: "Decline the pending approval of “" + b.experiment + "”? Nothing is promoted.",
               body: { action: "decline", approvalId: b.approvalId } };
    },
    pause: function (b) {
      return { title: "Pause the ramp", confirmLabel: "Pause",
               text: "Hold the ramp of “" + b.experiment + "” at its step? It stays guarded; resume it later.",
               body: { action: "pause", experimentName: b.experiment } };
    },
    resume: function (b) {
      return { title: "Resume the ramp", confirmLabel: "Resume",
               text: "Let the ramp of “" + b.experiment + "” go on from its step?",
               body: { action: "resume", experimentName: b.experiment } };
    }
  };

  function describeResult(action, data) {
    data = data || {};
    if (action === "check") {
      if (data.eligible) {
        var w = (data.winningVariant && data.winningVariant.variantName) || data.bestVariant || "?";
        return { kind: "ok", title: "✓ “" + data.experimentName + "” is eligible: " + w + " at " +
                 data.confidence + "% confidence, +" + data.improvement + "%.", items: [] };
      }
      return { kind: "ok", title: "✗ “" + (data.experimentName || "") + "” is not eligible yet:", items: data.reasons || [] };
    }
    if (action === "promote") {
      if (data.success && !data.dryRun) {
        return { kind: "ok", title: "✓ Promoted " + data.promotedVariantName + " of “" + data.experimentName + "”.",
                 items: data.promotionId ? ["promotion id " + data.promotionId] : [] };
      }
      if (data.success && data.dryRun) {
        return { kind: "ok", title: "Dry run (the server or the experiment’s own config says dry run, or promotion " +
                 "is disabled): “" + data.experimentName + "” would promote " + data.promotedVariantName +
                 "; nothing changed.", items: [] };
      }
      return { kind: "error", title: "✗ Not promoted: “" + (data.experimentName || "") + "”" +
               (data.dryRun ? " (dry run)" : "") + ":", items: data.reasons || [] };
    }
    if (action === "approve" || action === "decline") {
      var p = data.promotion || {};
      if (data.status === "approved") {
        return { kind: "ok", title: "✓ Approved: “" + data.experimentName + "”" +
                 (p.promotedVariantName ? " promoted " + p.promotedVariantName + "." : " moves on."),
                 items: p.promotionId ? ["promotion id " + p.promotionId] : [] };
      }
      if (data.status === "declined") {
        return { kind: "ok", title: "✓ Declined: “" + data.experimentName + "” is not promoted.", items: [] };
      }
      return { kind: "error", title: "✗ Approved, but nothing changed for “" + data.experimentName + "”:",
               items: data.reason ? [data.reason] : [] };
    }
    if (action === "pause" || action === "resume") {
      var r = data.rollout || {};
      return { kind: "ok", title: "✓ The ramp of “" + (data.experimentName || "") + "” is " +
               String(r.state || "").replace("_", " ") + " at " + r.treatmentShare + "% (step " + r.step + ").", items: [] };
    }
    return { kind: "ok", title: "✓ Rolled back " + (data.rolledBackVariantName || "the promotion") + " of “" +
             (data.experimentName || "") + "”.", items: data.reason ? ["reason: " + data.reason] : [] };
  }

  function describeError(status, payload, headers) {
    var err = (payload && payload.error) || {};
    var message = err.message || ("HTTP " + status);
    var code = err.code ? " [" + err.code + "]" : "";
    if (status === 401) { return "✗ The token was not accepted (401)" + code + ": " + message + ". Enter it again."; }
    if (status === 403) { return "✗ This token's role may not do that (403)" + code + ": " + message; }
    if (status === 404) { return "✗ Not found (404)" + code + ": " + message; }
    if (status === 409) { return "✗ Conflict (409)" + code + ": " + message; }
    if (status === 429) {
      var wait = headers.get("Retry-After");
      return "✗ Too many requests (429)" + code + ": " + message + (wait ? " Try again in " + wait + " s." : "");
    }
    return "✗ Failed (" + status + ")" + code + ": " + message;
  }

  function runAction(button) {
    var spec = ACTIONS[button.dataset.action];
    if (!spec) { return; }
    if (!token()) {
      openTokenPanel("Enter an API token first: operator actions need one.");
      return;
    }
    var b = { experiment: button.dataset.experiment || "", promotionId: button.dataset.promotionId || "",
              approvalId: button.dataset.approvalId || "" };
    var plan = spec(b);
    dialogOpener = button;
    confirmAction(plan).then(function (answer) {
      if (!answer) { return; }
      var body = plan.body;
      if (plan.needReason) { body.reason = answer.reason; }
      button.disabled = true;
      showStatus("pending", "Working: " + plan.title.toLowerCase() + " of “" + b.experiment + "”…");
      return fetch(API_URL, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json",
                   "Authorization": "Bearer " + token() },
        body: JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store"
      }).then(function (res) {
        return res.json().catch(function () { return null; }).then(function (payload) {
          if (res.ok && payload && payload.data) {
            // A promotion that is not eligible is a 200 with success false and the reasons in data.
            var r = describeResult(body.action, payload.data);
            showStatus(r.kind, r.title, r.items);
          } else {
            if (res.status === 401) { setToken(""); }
            var e = payload && payload.error && payload.error.details;
            showStatus("error", describeError(res.status, payload, res.headers),
                       e && e.reasons ? e.reasons : []);
            if (res.status === 401) { openTokenPanel(); }
          }
        });
      }).catch(function (err) {
        showStatus("error", "✗ The request failed: " + (err && err.message ? err.message : err));
      }).then(function () {
        button.disabled = false;
        // A check stores a fresh decision without a live event; a promotion or rollback also arrives as one.
        refreshAfter(body.action, b.experiment);
      });
    });
  }

  function initActions() {
    document.addEventListener("click", function (ev) {
      var target = ev.target instanceof Element ? ev.target.closest("button[data-action]") : null;
      if (target && !target.disabled) { runAction(target); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initToken();
    initActions();
    connect();
  });
})();
