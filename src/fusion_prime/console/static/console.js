// Fusion Prime console: times in the viewer's zone, charts, live refresh of <main>.
"use strict";

function localTimes(root) {
  const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  root.querySelectorAll("time[datetime]").forEach((el) => {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) { el.textContent = fmt.format(at); el.title = el.getAttribute("datetime"); }
  });
  const tz = document.getElementById("tz");
  if (tz) tz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

function charts(root) {
  if (typeof Plotly === "undefined") return;
  root.querySelectorAll("[data-chart]").forEach((el) => {
    const data = JSON.parse(el.nextElementSibling.textContent);
    const x = data.x.map((t) => new Date(t));
    let traces;
    if (el.dataset.chart === "ohlc") {
      traces = [{ type: "candlestick", x, open: data.open, high: data.high, low: data.low, close: data.close }];
    } else {
      traces = [{ type: "scatter", mode: "lines+markers", x, y: data.y.map((v) => (v === null ? null : Number(v))),
                  text: data.status, name: "health factor" }];
    }
    const layout = { margin: { t: 10, r: 10, b: 40, l: 60 }, showlegend: false,
                     xaxis: { type: "date", rangeslider: { visible: false } } };
    Plotly.react(el, traces, layout, { displayModeBar: false, responsive: true });
    el.dataset.rendered = "yes";
  });
}

function refresh(main) {
  const seconds = Number(main.dataset.refresh || 0);
  if (!seconds) return;
  setInterval(async () => {
    if (document.hidden || document.activeElement && document.activeElement.tagName === "INPUT") return;
    try {
      const r = await fetch(window.location.href, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
      if (!r.ok || r.redirected) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (!fresh) return;
      main.innerHTML = fresh.innerHTML;
      localTimes(main);
      charts(main);
    } catch (e) { /* next tick tries again */ }
  }, seconds * 1000);
}

window.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  charts(document);
  const main = document.getElementById("live");
  if (main) refresh(main);
});
