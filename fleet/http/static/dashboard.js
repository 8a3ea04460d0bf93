// The dashboard's behaviour in the browser (no build step, no library).
//
// - Times: every <time data-epoch> the server rendered is shown in the viewer's time zone.
// - Live: one EventSource on /api/v1/live. Telemetry updates a device's cells in place; a
//   status message updates its state (the Last Will arrives as state "offline"); a device
//   the page does not show yet, a device's event on its page, and a rollout change, make
//   the page fetch itself again and swap its live regions (elements with class "region" and
//   an id): the server renders them, this file never builds markup from the feed.
// - Actions: forms with class "action" and buttons with class "act" POST JSON to the API
//   (the cookie authenticates them) and show the reply, or the refusal's `error`.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const subject = body.dataset.subject;

  // -- formatting (the same units as the server's templates) ---------------------------------

  function num(value, unit, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    return value.toFixed(digits === undefined ? 1 : digits) + (unit ? " " + unit : "");
  }

  function latency(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
  }

  function localTimes(root) {
    root.querySelectorAll("time[data-epoch]").forEach(function (el) {
      const at = new Date(Number(el.dataset.epoch) * 1000);
      el.textContent = at.toLocaleString();
      el.title = at.toISOString();
    });
  }

  function timeElement(epoch) {
    const el = document.createElement("time");
    el.dataset.epoch = String(epoch);
    el.setAttribute("datetime", new Date(epoch * 1000).toISOString());
    localTimes({ querySelectorAll: function () { return [el]; } });
    return el;
  }

  // -- reading a telemetry message (as fleet/http/views.py does) -----------------------------

  function models(t) {
    const inference = t && typeof t.inference === "object" && t.inference;
    return inference && Array.isArray(inference.models) ? inference.models : [];
  }

  function maxOf(values) {
    const found = values.filter(function (v) { return typeof v === "number" && isFinite(v); });
    return found.length ? Math.max.apply(null, found) : null;
  }

  const readers = {
    cpu: function (t) { return t.cpu ? t.cpu.percent : null; },
    memory: function (t) { return t.memory ? t.memory.used_percent : null; },
    temperature: function (t) {
      return t.temperatures_c ? maxOf(Object.values(t.temperatures_c)) : null;
    },
    p95: function (t) {
      return maxOf(models(t).map(function (m) {
        return (m.latency_quantile_seconds || {})["0.95"];
      }));
    },
    drift: function (t) {
      return maxOf(models(t).flatMap(function (m) { return Object.values(m.drift_psi || {}); }));
    },
    serial: function (t) {
      if (!t.serial || typeof t.serial !== "object") return null;
      return t.serial.connected === true ? "connected" : "disconnected";
    },
  };

  // -- live updates ---------------------------------------------------------------------------

  function deviceElements(id) {
    return Array.from(document.querySelectorAll("[data-device]")).filter(function (el) {
      return el.dataset.device === id;
    });
  }

  function setField(root, name, content) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
      if (typeof content === "string") {
        el.textContent = content;
      } else {
        el.replaceChildren(content);
      }
    });
  }

  function onTelemetry(event) {
    const found = deviceElements(event.subject);
    if (!found.length) {
      unknownDevice(event.subject);
      return;
    }
    const t = event.data;
    found.forEach(function (root) {
      setField(root, "cpu", num(readers.cpu(t), "%"));
      setField(root, "memory", num(readers.memory(t), "%"));
      setField(root, "temperature", num(readers.temperature(t), "°C"));
      setField(root, "p95", latency(readers.p95(t)));
      setField(root, "drift", num(readers.drift(t), "PSI", 3));
      setField(root, "serial", readers.serial(t) || "–");
      setField(root, "seen", timeElement(event.at));
    });
  }

  function onStatus(event) {
    const found = deviceElements(event.subject);
    if (!found.length) {
      unknownDevice(event.subject);
      return;
    }
    const state = event.data.state === "online" ? "online" : "offline";
    found.forEach(function (root) {
      root.querySelectorAll('[data-field="state"]').forEach(function (el) {
        el.textContent = state;
        el.className = "state state-" + state;
      });
      const sent = Date.parse(event.data.ts) / 1000; // ISO 8601, as the device sent it
      const since = isFinite(sent) ? sent : event.at;
      const label = document.createElement("span");
      label.append("since ", timeElement(since));
      setField(root, "since", label);
      if (root.tagName === "TR") root.className = state;
    });
  }

  function onEvents(event) {
    if (page === "device" && subject === event.subject) refresh(); // the event history
  }

  function onRollout(event) {
    if (page === "rollouts" || (page === "rollout" && subject === event.subject)) refresh();
  }

  // A device this page does not show: fetch the page again (its rows are the server's, and
  // only the server knows whether a selector matches). Once per device: one that is still
  // missing after that does not match this page's filter.
  const asked = new Set();
  function unknownDevice(id) {
    if (page !== "devices" || asked.has(id)) return;
    asked.add(id);
    refresh();
  }

  let refreshing = null;
  let again = false;
  function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = fetch(window.location.href, { credentials: "same-origin" })
      .then(function (reply) { return reply.ok ? reply.text() : null; })
      .then(function (html) {
        if (html) swapRegions(new DOMParser().parseFromString(html, "text/html"));
      })
      .catch(function () { /* the next event or reconnection tries again */ })
      .finally(function () {
        refreshing = null;
        if (again) {
          again = false;
          window.setTimeout(refresh, 250);
        }
      });
  }

  function swapRegions(fresh) {
    document.querySelectorAll(".region[id]").forEach(function (old) {
      const replacement = fresh.getElementById(old.id);
      if (!replacement) return;
      old.replaceWith(replacement);
      localTimes(replacement);
    });
  }

  function connect() {
    if (!window.EventSource || page === "login") return;
    const indicator = document.getElementById("live-state");
    const source = new EventSource("/api/v1/live");
    let dropped = false;
    source.onopen = function () {
      if (indicator) indicator.className = "live-state on";
      if (dropped) refresh(); // events may have been missed meanwhile
      dropped = false;
    };
    source.onerror = function () {
      if (indicator) indicator.className = "live-state off";
      dropped = true;
    };
    function listen(kind, handler) {
      source.addEventListener(kind, function (message) {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (_error) {
          return;
        }
        handler(event);
        document.dispatchEvent(new CustomEvent("fleet:" + kind, { detail: event }));
      });
    }
    listen("telemetry", onTelemetry);
    listen("status", onStatus);
    listen("events", onEvents);
    listen("rollout", onRollout);
  }

  // -- actions --------------------------------------------------------------------------------

  function formBody(form) {
    const out = {};
    Array.from(form.elements).forEach(function (el) {
      if (!el.name) return;
      if (el.type === "checkbox") {
        out[el.name] = el.checked;
      } else if (el.value === "") {
        return; // left out: the server's default applies
      } else if (el.dataset.type === "list") {
        out[el.name] = [el.value];
      } else if (el.type === "number") {
        out[el.name] = Number(el.value);
      } else {
        out[el.name] = el.value;
      }
    });
    return out;
  }

  function show(resultId, text, refused) {
    const el = document.getElementById(resultId) || document.getElementById("action-result");
    el.textContent = text;
    el.className = refused ? "result error" : "result ok";
    el.hidden = false;
  }

  function post(endpoint, payload, resultId, after) {
    show(resultId, "sending…", false);
    return fetch(endpoint, {
      method: "POST",
      credentials: "same-origin",
      referrerPolicy: "same-origin", // the Origin header the server's same-origin check reads
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(payload),
    })
      .then(function (reply) {
        return reply.json().catch(function () { return {}; }).then(function (json) {
          if (!reply.ok) {
            show(resultId, "refused (" + reply.status + "): " + (json.error || json.detail || reply.statusText), true);
            return;
          }
          show(resultId, "done", false);
          if (after) after(json);
        });
      })
      .catch(function (error) { show(resultId, "not sent: " + error, true); });
  }

  function afterAction(element) {
    return function (reply) {
      const rollout = reply && reply.rollout && reply.rollout.summary;
      if (element.dataset.goto === "rollout" && rollout) {
        window.location.assign("/rollouts/" + encodeURIComponent(rollout.rollout_id));
      } else {
        refresh();
      }
    };
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form.classList || !form.classList.contains("action")) return;
    event.preventDefault();
    post(form.dataset.endpoint, formBody(form), form.dataset.result, afterAction(form));
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest ? event.target.closest("button.act") : null;
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    post(button.dataset.endpoint, {}, button.dataset.result, afterAction(button));
  });

  window.fleet = { readers: readers, num: num, latency: latency, refresh: refresh };
  localTimes(document);
  connect();
})();
