/* The ECG viewer (plain JS, no build step): zoom, calipers and keyboard shortcuts on the SVG sheet.
 *
 * The sheet's user units are millimetres; the <svg> carries data-speed (mm/s) and data-gain (mm/mV), so a
 * distance measured on the paper converts to milliseconds and millivolts exactly, whatever the zoom.
 * Calipers: switch them on (button or "c"), click two points: Δt in ms, ΔmV, and the rate in bpm when the
 * two points span one RR interval. Shortcuts work anywhere except while typing in a form field.
 */
(function () {
  "use strict";
  var paper = document.getElementById("ecg-paper");
  if (!paper) { return; }
  var svg = paper.querySelector("svg");
  if (!svg) { return; }
  var NS = "http://www.w3.org/2000/svg";
  var PX_PER_MM = 96 / 25.4;
  var box = svg.viewBox.baseVal;
  var speed = parseFloat(svg.getAttribute("data-speed")) || 25;
  var gain = parseFloat(svg.getAttribute("data-gain")) || 10;
  var readout = document.getElementById("ecg-readout");
  var zoomLabel = document.getElementById("ecg-zoom");
  var help = document.getElementById("ecg-help");
  var text = {};
  try { text = JSON.parse(document.getElementById("ecg-text").textContent); } catch (e) { text = {}; }
  var zoom = 1;
  var calipersOn = false;
  var first = null;
  var layer = document.createElementNS(NS, "g");
  layer.setAttribute("class", "ecg-calipers");
  svg.appendChild(layer);

  function setZoom(z) {
    zoom = Math.min(8, Math.max(0.25, z));
    svg.style.width = (box.width * PX_PER_MM * zoom) + "px";
    svg.style.height = (box.height * PX_PER_MM * zoom) + "px";
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    if (zoomLabel) { zoomLabel.textContent = Math.round(zoom * 100) + "%"; }
  }

  function fit() { setZoom((paper.clientWidth - 4) / (box.width * PX_PER_MM)); }

  function clearCalipers() {
    first = null;
    while (layer.firstChild) { layer.removeChild(layer.firstChild); }
    if (readout) { readout.textContent = calipersOn ? (text.first || "") : ""; }
  }

  function toggleCalipers(on) {
    calipersOn = typeof on === "boolean" ? on : !calipersOn;
    var button = document.querySelector('[data-ecg="calipers"]');
    if (button) { button.setAttribute("aria-pressed", calipersOn ? "true" : "false"); }
    clearCalipers();
    if (!calipersOn && readout) { readout.textContent = text.off || ""; }
  }

  function toggleHelp(show) {
    if (!help) { return; }
    var visible = typeof show === "boolean" ? show : help.hidden;
    help.hidden = !visible;
    if (visible) { var b = help.querySelector("button"); if (b) { b.focus(); } } else { paper.focus(); }
  }

  function point(evt) {
    var pt = svg.createSVGPoint();
    pt.x = evt.clientX;
    pt.y = evt.clientY;
    var m = svg.getScreenCTM();
    return m ? pt.matrixTransform(m.inverse()) : { x: 0, y: 0 };
  }

  function mark(x, y) {
    var c = document.createElementNS(NS, "circle");
    c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", "0.6");
    c.setAttribute("fill", "#1d4ed8");
    layer.appendChild(c);
  }

  function measure(a, b) {
    var dtMs = Math.abs(b.x - a.x) / speed * 1000;
    var dMv = (a.y - b.y) / gain;
    var line = document.createElementNS(NS, "path");
    line.setAttribute("d", "M" + a.x + " " + a.y + "L" + b.x + " " + a.y + "L" + b.x + " " + b.y);
    line.setAttribute("stroke", "#1d4ed8"); line.setAttribute("stroke-width", "0.25"); line.setAttribute("fill", "none");
    line.setAttribute("stroke-dasharray", "1 0.5");
    layer.appendChild(line);
    var parts = [(text.dt || "Δt") + " " + dtMs.toFixed(0) + " ms", (text.dv || "ΔV") + " " + dMv.toFixed(2) + " mV"];
    if (dtMs >= 150) { parts.push((text.rate || "rate") + " " + (60000 / dtMs).toFixed(0) + " bpm"); }
    var label = parts.join(" · ");
    if (!readout) { return; }
    readout.textContent = label;
    readout.setAttribute("data-dt-ms", dtMs.toFixed(1));
    readout.setAttribute("data-dv-mv", dMv.toFixed(3));
  }

  svg.addEventListener("click", function (evt) {
    if (!calipersOn) { return; }
    var p = point(evt);
    if (!first || layer.childNodes.length > 2) {
      clearCalipers();
      first = p;
      mark(p.x, p.y);
      return;
    }
    mark(p.x, p.y);
    measure(first, p);
    first = null;
  });

  document.addEventListener("click", function (evt) {
    var target = evt.target.closest ? evt.target.closest("[data-ecg]") : null;
    if (!target) { return; }
    var what = target.getAttribute("data-ecg");
    if (what === "zoom-in") { setZoom(zoom * 1.25); }
    else if (what === "zoom-out") { setZoom(zoom / 1.25); }
    else if (what === "zoom-reset") { setZoom(1); }
    else if (what === "fit") { fit(); }
    else if (what === "calipers") { toggleCalipers(); }
    else if (what === "help") { toggleHelp(); }
  });

  document.addEventListener("keydown", function (evt) {
    var tag = (evt.target && evt.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || evt.ctrlKey || evt.metaKey || evt.altKey) { return; }
    var key = evt.key;
    var handled = true;
    if (key === "+" || key === "=") { setZoom(zoom * 1.25); }
    else if (key === "-" || key === "_") { setZoom(zoom / 1.25); }
    else if (key === "0") { setZoom(1); }
    else if (key === "f") { fit(); }
    else if (key === "c") { toggleCalipers(); }
    else if (key === "?") { toggleHelp(); }
    else if (key === "Escape") { if (help && !help.hidden) { toggleHelp(false); } else { clearCalipers(); } }
    else if (key === "r") {
      var form = document.getElementById("ecg-report-form") || document.getElementById("report");
      var field = form && form.querySelector("input[type=checkbox], button, a");
      if (field) { field.focus(); form.scrollIntoView(); }
    }
    else if (key === "ArrowRight") { paper.scrollLeft += 60; }
    else if (key === "ArrowLeft") { paper.scrollLeft -= 60; }
    else if (key === "ArrowDown" && document.activeElement === paper) { window.scrollBy(0, 60); }
    else if (key === "ArrowUp" && document.activeElement === paper) { window.scrollBy(0, -60); }
    else { handled = false; }
    if (handled) { evt.preventDefault(); }
  });

  fit();
})();
