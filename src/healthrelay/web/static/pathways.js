/* Pathway clocks (plain JS, no build step).
 *
 * Every element with data-clock-start (an ISO time) shows the minutes since then, or until data-clock-stop
 * once that node is recorded, and turns amber at data-amber × data-target-min and red past the target
 * (data-comparison "le": late above the target, "lt": late at it). The server renders the same values at
 * load, so the page reads without JavaScript; this only keeps them moving. Cards swapped in by htmx are
 * found again on the next tick.
 */
(function () {
  "use strict";

  function text(minutes) {
    var whole = Math.max(0, Math.floor(minutes));
    if (whole < 60) { return whole + "\u2032"; }
    var m = whole % 60;
    return Math.floor(whole / 60) + ":" + (m < 10 ? "0" : "") + m;
  }

  function level(minutes, target, comparison, amber, stopped) {
    if (!(target > 0)) { return "plain"; }
    var late = comparison === "lt" ? minutes >= target : minutes > target;
    if (stopped) { return late ? "stopped-red" : "stopped-ok"; }
    if (late) { return "red"; }
    return minutes >= target * amber ? "amber" : "ok";
  }

  function tick() {
    var now = Date.now();
    var clocks = document.querySelectorAll("[data-clock-start]");
    for (var i = 0; i < clocks.length; i++) {
      var el = clocks[i];
      var start = Date.parse(el.getAttribute("data-clock-start") || "");
      if (isNaN(start)) { continue; }
      var stopText = el.getAttribute("data-clock-stop") || "";
      var stop = stopText ? Date.parse(stopText) : NaN;
      var minutes = ((isNaN(stop) ? now : stop) - start) / 60000;
      var value = el.querySelector("[data-clock-value]");
      if (value) { value.textContent = text(minutes); }
      var lvl = level(minutes, parseFloat(el.getAttribute("data-target-min") || ""),
                      el.getAttribute("data-comparison") || "le", parseFloat(el.getAttribute("data-amber") || "0.667"),
                      !isNaN(stop));
      el.className = el.className.replace(/\blvl-[a-z-]+/g, "").trim() + " lvl-" + lvl;
      var card = el.closest(".pw-card");
      if (card && (lvl === "red" || lvl === "amber")) {
        var worse = lvl === "red" || !card.classList.contains("lvl-red");
        if (worse) { card.classList.remove("lvl-ok", "lvl-amber", "lvl-red"); card.classList.add("lvl-" + lvl); }
      }
    }
  }

  tick();
  window.setInterval(tick, 1000);
})();
