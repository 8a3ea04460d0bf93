// The device page's charts (uPlot, vendored): host readings and inference over time.
//
// The history comes from GET /api/v1/devices/{id}/telemetry (a TelemetrySeriesReply:
// `buckets`, each with `at` and the host's means, and `models`, each with its own `buckets`
// index for index). Field names are read tolerantly (a numeric field named for cpu, memory,
// temperature, p95/latency or drift/psi; the highest over models; "_max"/"_min" companions
// skipped), so the chart keeps working if the reply grows. When the route is missing or
// fails, the page's embedded series (the latest telemetry, #series-data) is the start. Live
// telemetry (dashboard.js's "fleet:telemetry" events) is appended either way. The number of
// points drawn is left in the chart box's data-points (what the browser test reads).
"use strict";

(function () {
  const deviceId = document.body.dataset.subject;
  const hostBox = document.getElementById("chart-host");
  const inferenceBox = document.getElementById("chart-inference");
  const source = document.getElementById("chart-source");
  if (!hostBox || !inferenceBox || !window.uPlot) return;

  const MAX_POINTS = 1000;
  const FIELDS = ["cpu_percent", "memory_percent", "temperature_c", "p95_s", "drift_psi"];
  const points = [];

  function named(name) {
    if (/cpu/.test(name)) return "cpu_percent";
    if (/mem/.test(name)) return "memory_percent";
    if (/temp/.test(name)) return "temperature_c";
    if (/p95|latency/.test(name)) return "p95_s";
    if (/drift|psi/.test(name)) return "drift_psi";
    return null;
  }

  // The field a numeric leaf feeds: by its own name, else by its section's (`cpu.percent`);
  // never a model's name (a model may be called "temperature-net").
  function canonical(path) {
    const last = path[path.length - 1].toLowerCase();
    if (/(^|_)(max|min)(_|$)/.test(last) || /(^|_)(count|samples|n)$/.test(last)) return null;
    const parent = path.length > 1 ? path[path.length - 2].toLowerCase() : "";
    return named(last) || (parent.startsWith("model:") ? null : named(parent));
  }

  // The reply's buckets with each model's bucket of the same index merged in.
  function bucketsOf(reply) {
    const buckets = Array.isArray(reply.buckets) ? reply.buckets : [];
    const models = Array.isArray(reply.models) ? reply.models : [];
    return buckets.map(function (bucket, index) {
      const merged = Object.assign({}, bucket);
      models.forEach(function (series) {
        const own = series && Array.isArray(series.buckets) ? series.buckets[index] : null;
        if (own && typeof own === "object") merged["model:" + series.model] = own;
      });
      return merged;
    });
  }

  // One bucket of the API's reply (or one embedded point) as {at, FIELD: number|null}.
  function pointOf(bucket) {
    const at = [bucket.at, bucket.ts, bucket.t, bucket.start].find(function (v) {
      return typeof v === "number";
    });
    if (at === undefined) return null;
    const point = { at: at };
    FIELDS.forEach(function (f) { point[f] = null; });
    (function walk(value, path) {
      if (typeof value === "number" && isFinite(value) && path.length) {
        const field = canonical(path);
        if (field && (point[field] === null || value > point[field])) point[field] = value;
      } else if (value && typeof value === "object") {
        Object.keys(value).forEach(function (key) {
          if (path.length === 0 && ["at", "ts", "t", "start", "end", "until"].includes(key)) return;
          walk(value[key], path.concat([key]));
        });
      }
    })(bucket, []);
    return point;
  }

  function embedded() {
    const el = document.getElementById("series-data");
    try {
      const parsed = JSON.parse(el ? el.textContent : "{}");
      return Array.isArray(parsed.buckets) ? parsed.buckets : [];
    } catch (_error) {
      return [];
    }
  }

  function history() {
    // No since: the controller's default, the last hour from its first sample in it (a
    // device seen for a minute gets its points over that minute).
    const url = "/api/v1/devices/" + encodeURIComponent(deviceId) + "/telemetry?points=120";
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (reply) { return reply.ok ? reply.json() : null; })
      .catch(function () { return null; })
      .then(function (reply) {
        const buckets = reply ? bucketsOf(reply) : [];
        if (buckets.length) {
          source.textContent = "Last hour from the controller's store (" + buckets.length +
            (buckets.length === 1 ? " point" : " points") + "), then live.";
          return buckets;
        }
        source.textContent = "The latest reading, then live telemetry as it arrives.";
        return embedded();
      });
  }

  function column(field, scale) {
    return points.map(function (p) {
      const v = p[field];
      return v === null || v === undefined ? null : v * (scale || 1);
    });
  }

  function size(box) {
    return { width: Math.max(240, box.clientWidth), height: 220 };
  }

  function makePlots() {
    const xs = points.map(function (p) { return p.at; });
    const host = new window.uPlot(Object.assign(size(hostBox), {
      series: [
        {},
        { label: "CPU %", stroke: "#2b6cb0", spanGaps: true },
        { label: "Memory %", stroke: "#2f855a", spanGaps: true },
        { label: "Temp °C", stroke: "#c05621", spanGaps: true },
      ],
      axes: [{}, { label: "% / °C" }],
    }), [xs, column("cpu_percent"), column("memory_percent"), column("temperature_c")],
    hostBox);
    const inference = new window.uPlot(Object.assign(size(inferenceBox), {
      scales: { ms: {}, psi: {} },
      series: [
        {},
        { label: "p95 ms", stroke: "#6b46c1", scale: "ms", spanGaps: true },
        { label: "drift PSI", stroke: "#b7791f", scale: "psi", spanGaps: true },
      ],
      axes: [{}, { scale: "ms", label: "ms" }, { scale: "psi", side: 1, label: "PSI" }],
    }), [xs, column("p95_s", 1000), column("drift_psi")], inferenceBox);
    return { host: host, inference: inference };
  }

  function counted() {
    hostBox.dataset.points = String(points.length);
    inferenceBox.dataset.points = String(points.filter(function (p) {
      return p.p95_s !== null || p.drift_psi !== null;
    }).length);
  }

  function redraw(plots) {
    counted();
    const xs = points.map(function (p) { return p.at; });
    plots.host.setData([xs, column("cpu_percent"), column("memory_percent"),
      column("temperature_c")]);
    plots.inference.setData([xs, column("p95_s", 1000), column("drift_psi")]);
  }

  function live(plots) {
    const readers = window.fleet && window.fleet.readers;
    document.addEventListener("fleet:telemetry", function (message) {
      const event = message.detail;
      if (!readers || event.subject !== deviceId) return;
      const t = event.data;
      points.push({
        at: event.at,
        cpu_percent: readers.cpu(t),
        memory_percent: readers.memory(t),
        temperature_c: readers.temperature(t),
        p95_s: readers.p95(t),
        drift_psi: readers.drift(t),
      });
      if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
      redraw(plots);
    });
    window.addEventListener("resize", function () {
      plots.host.setSize(size(hostBox));
      plots.inference.setSize(size(inferenceBox));
    });
  }

  history().then(function (buckets) {
    buckets.map(pointOf).filter(Boolean).forEach(function (p) { points.push(p); });
    points.sort(function (a, b) { return a.at - b.at; });
    const plots = makePlots();
    counted();
    live(plots);
  });
})();
