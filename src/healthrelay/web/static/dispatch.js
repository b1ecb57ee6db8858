/* The emergency pages' small helpers (plain JS, no build step). Every page works without it.
 *
 * - waiting clocks: elements with data-since (ISO time) show the time waited, ticking every second;
 *   data-late-after (seconds) turns them red;
 * - board keys: 1–9 press the dispatch button of that call row, N opens a new call (not while typing);
 * - board map: ECharts scatter of stations, ambulances and calls on longitude/latitude (no tiles),
 *   redrawn when htmx swaps the board in;
 * - intake: village/town search (pinyin too) and patient search as the dispatcher types, keyboard-usable;
 * - crew page: the phone's position (geolocation) goes with each state button;
 * - metrics: monthly shares with their target lines.
 */
(function () {
  "use strict";

  var zh = (document.documentElement.lang || "zh").indexOf("zh") === 0;

  // ------------------------------------------------------------------ waiting clocks
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function elapsed(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s);
  }
  function tick() {
    var now = Date.now();
    var els = document.querySelectorAll("[data-since]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var since = Date.parse(el.getAttribute("data-since"));
      if (isNaN(since)) { continue; }
      if (!el.hasAttribute("data-clock")) { el.setAttribute("data-clock", el.textContent); }
      var secs = (now - since) / 1000;
      el.textContent = el.getAttribute("data-clock") + " · " + elapsed(secs);
      var late = el.getAttribute("data-late-after");
      if (late) { el.classList.toggle("late", secs > Number(late)); }
    }
  }
  tick();
  setInterval(tick, 1000);
  document.body.addEventListener("htmx:afterSwap", function () { tick(); drawBoardMap(); });

  // ------------------------------------------------------------------ board keys
  function typing(target) {
    var tag = (target && target.tagName) || "";
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }
  if (document.getElementById("board")) {
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) { return; }
      if (ev.key >= "1" && ev.key <= "9") {
        var button = document.querySelector('.dispatch-button[data-index="' + ev.key + '"]');
        if (button) { ev.preventDefault(); button.focus(); button.click(); }
      } else if (ev.key === "n" || ev.key === "N") {
        ev.preventDefault();
        window.location.href = "/emergency/calls/new";
      }
    });
  }

  // ------------------------------------------------------------------ board map
  var chart = null;
  function drawBoardMap() {
    var el = document.getElementById("board-map");
    var dataEl = document.getElementById("board-map-data");
    if (!el || !dataEl) { return; }
    var labels = JSON.parse(el.getAttribute("data-labels") || "{}");
    if (typeof echarts === "undefined") { el.textContent = labels.failed || ""; return; }
    var data = JSON.parse(dataEl.textContent || "{}");
    var colours = { available: "#16a34a", out_of_service: "#6b7280" };
    var series = [
      { name: labels.station, type: "scatter", symbol: "rect", symbolSize: 12, itemStyle: { color: "#0f766e" },
        data: (data.stations || []).map(function (s) { return { name: s.name, value: [s.lon, s.lat] }; }) },
      { name: labels.ambulance, type: "scatter", symbol: "triangle", symbolSize: 12,
        data: (data.ambulances || []).map(function (a) {
          return { name: a.code + " · " + a.state, value: [a.lon, a.lat],
                   itemStyle: { color: colours[a.state] || "#f59e0b" } };
        }) },
      { name: labels.call, type: "effectScatter", symbolSize: 14, itemStyle: { color: "#dc2626" },
        data: (data.calls || []).map(function (c) { return { name: c.number + " P" + c.priority, value: [c.lon, c.lat] }; }) }
    ];
    // Frame the points with a margin (all on one line would otherwise stretch the axis to whole degrees).
    var lons = [], lats = [];
    series.forEach(function (s) { s.data.forEach(function (d) { lons.push(d.value[0]); lats.push(d.value[1]); }); });
    function bounds(v) {
      if (!v.length) { return {}; }
      var lo = Math.min.apply(null, v), hi = Math.max.apply(null, v), pad = Math.max((hi - lo) * 0.08, 0.01);
      return { min: +(lo - pad).toFixed(3), max: +(hi + pad).toFixed(3) };
    }
    var bx = bounds(lons), by = bounds(lats);
    if (!chart) { chart = echarts.init(el, null, { renderer: "canvas" }); window.addEventListener("resize", function () { chart.resize(); }); }
    chart.setOption({
      animation: false,
      tooltip: { trigger: "item", formatter: function (p) { return echarts.format.encodeHTML(p.name); } },
      legend: { top: 4 },
      grid: { left: 50, right: 20, top: 36, bottom: 30 },
      xAxis: { type: "value", scale: true, name: zh ? "经度" : "lon", min: bx.min, max: bx.max },
      yAxis: { type: "value", scale: true, name: zh ? "纬度" : "lat", min: by.min, max: by.max },
      series: series
    }, true);
  }
  window.addEventListener("load", drawBoardMap);

  // ------------------------------------------------------------------ intake pickers
  function picker(input, list, url, render, choose) {
    if (!input || !list) { return; }
    var timer = null, seq = 0;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      var q = input.value.trim();
      if (!q) { list.innerHTML = ""; return; }
      timer = setTimeout(function () {
        var mine = ++seq;
        fetch(url + encodeURIComponent(q), { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : []; })
          .then(function (rows) {
            if (mine !== seq) { return; }
            list.innerHTML = "";
            rows.slice(0, 10).forEach(function (row) {
              var li = document.createElement("li");
              var b = document.createElement("button");
              b.type = "button";
              b.textContent = render(row);
              b.addEventListener("click", function () { choose(row); list.innerHTML = ""; });
              li.appendChild(b);
              list.appendChild(li);
            });
          })
          .catch(function () { /* the form still works by typing the name */ });
      }, 250);
    });
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "ArrowDown") {
        var first = list.querySelector("button");
        if (first) { ev.preventDefault(); first.focus(); }
      } else if (ev.key === "Enter" && list.querySelector("button")) {
        ev.preventDefault();
        list.querySelector("button").click();
      }
    });
    list.addEventListener("keydown", function (ev) {
      var b = ev.target;
      if (ev.key === "ArrowDown" && b.parentNode.nextSibling) { ev.preventDefault(); b.parentNode.nextSibling.firstChild.focus(); }
      if (ev.key === "ArrowUp") {
        ev.preventDefault();
        if (b.parentNode.previousSibling) { b.parentNode.previousSibling.firstChild.focus(); } else { input.focus(); }
      }
    });
  }
  var areaQ = document.getElementById("area_q");
  picker(areaQ, document.getElementById("area-results"), "/api/v1/emergency/areas?q=",
    function (a) { return a.name + (a.parent_name ? "（" + a.parent_name + "）" : "") + (a.urban ? (zh ? " · 城区" : " · urban") : ""); },
    function (a) {
      document.getElementById("area_id").value = a.id;
      areaQ.value = a.name;
      var chosen = document.getElementById("area-chosen");
      if (chosen) { chosen.textContent = (zh ? "已选：" : "Chosen: ") + a.name + (a.parent_name ? "（" + a.parent_name + "）" : ""); }
      var next = document.getElementById("address");
      if (next) { next.focus(); }
    });
  if (areaQ) {
    areaQ.addEventListener("input", function () { document.getElementById("area_id").value = ""; });
  }
  var patientQ = document.getElementById("patient_q");
  picker(patientQ, document.getElementById("patient-results"), "/api/v1/patients?q=",
    function (p) { return p.name + " · " + p.birth_year + (p.area_name ? " · " + p.area_name : "") + (p.masked_id ? " · " + p.masked_id : ""); },
    function (p) {
      document.getElementById("patient_id").value = p.id;
      patientQ.value = p.name;
      var chosen = document.getElementById("patient-chosen");
      if (chosen) { chosen.textContent = (zh ? "已选：" : "Chosen: ") + p.name + " · " + p.birth_year; }
    });

  // ------------------------------------------------------------------ crew position
  if (document.getElementById("crew-page") && navigator.geolocation) {
    var status = document.getElementById("geo-status");
    navigator.geolocation.getCurrentPosition(function (pos) {
      var lat = pos.coords.latitude.toFixed(6), lon = pos.coords.longitude.toFixed(6);
      document.querySelectorAll(".geo-lat").forEach(function (el) { el.value = lat; });
      document.querySelectorAll(".geo-lon").forEach(function (el) { el.value = lon; });
      if (status) { status.textContent = (zh ? "已定位：" : "Position: ") + lat + ", " + lon; }
    }, function () { /* no permission: the server logs the scene, hospital or station */ },
    { enableHighAccuracy: true, timeout: 8000, maximumAge: 30000 });
  }

  // ------------------------------------------------------------------ metrics chart
  function drawMetrics() {
    var el = document.getElementById("metrics-chart");
    var dataEl = document.getElementById("metrics-chart-data");
    if (!el || !dataEl || typeof echarts === "undefined") { return; }
    var data = JSON.parse(dataEl.textContent || "{}");
    var labels = JSON.parse(el.getAttribute("data-labels") || "{}");
    var targets = JSON.parse(el.getAttribute("data-targets") || "{}");
    var line = function (key) {
      return { name: labels[key], type: "line", data: data[key], connectNulls: true,
               markLine: targets[key] ? { symbol: "none", label: { formatter: labels.target + " " + targets[key] + "%" },
                                          data: [{ yAxis: targets[key] }] } : undefined };
    };
    echarts.init(el).setOption({
      tooltip: { trigger: "axis" }, legend: { top: 0 }, grid: { left: 40, right: 20, top: 36, bottom: 30 },
      xAxis: { type: "category", data: data.months }, yAxis: { type: "value", min: 50, max: 100, name: "%" },
      series: [line("answer"), line("depart"), line("on_scene")]
    });
  }
  window.addEventListener("load", drawMetrics);
})();
