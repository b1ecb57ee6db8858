/* HealthRelay imaging viewer (plain ES5 + canvas 2D, no build step; meant for old office PCs).
 *
 * The page already shows the first frame (an <img> in the initial HTML); this script fetches the study
 * JSON (/api/v1/imaging/studies/{uid}), then draws frames on a canvas: scrolling (wheel, arrows,
 * PageUp/PageDown, slider), window/level presets and right-drag (frames re-requested from the server
 * as rendered PNGs with ?window=c,w), zoom and pan, distance in mm (PixelSpacing), and a second
 * viewport for a prior study. Frames are fetched a few at a time around the current one and kept,
 * decoded, in a bounded LRU cache.
 */
(function () {
  "use strict";
  var root = document.getElementById("hr-viewer");
  if (!root || !window.Map) { return; }

  var TEXT = JSON.parse(document.getElementById("hv-text").textContent);
  var CACHE_MAX = 40;       // decoded frames kept (a 512x512 frame is ~1 MB decoded)
  var MAX_LOADS = 3;        // prefetches in flight at once (the current frame never waits)
  var AHEAD = 4, BEHIND = 2;
  var DEFAULT_WINDOW = { c: 40, w: 400 };
  var dpr = Math.max(1, Math.min(window.devicePixelRatio || 1, 2));
  var perf = window.performance;
  // firstFrameAt: the HTML's first image painted; canvasAt: the canvas took over (study JSON loaded).
  var state = { panes: [], active: null, measuring: false, firstFrameAt: null, canvasAt: null, loads: 0,
    maxCache: CACHE_MAX };
  window.hrViewer = state;

  function $(sel, el) { return (el || document).querySelector(sel); }
  function now() { return perf && perf.now ? perf.now() : Date.now(); }
  function enc(s) { return encodeURIComponent(s); }
  function round(v) { return Math.round(v); }

  function frameUrl(study, series, sop, frame, win) {
    var url = "/dicomweb/studies/" + enc(study) + "/series/" + enc(series) + "/instances/" + enc(sop) +
      "/frames/" + frame + "/rendered";
    return win ? url + "?window=" + round(win.c) + "," + round(win.w) : url;
  }

  /* ---------------------------------------------------------------- bounded frame cache and loader */

  var cache = new Map();  // url -> {url, img, state: queued|loading|ready|error, waiters, owner}
  var queue = [];
  var active = 0;

  function touch(entry) { cache["delete"](entry.url); cache.set(entry.url, entry); }

  function shownUrls() {
    var urls = {};
    state.panes.forEach(function (p) { if (p.entry) { urls[p.entry.url] = true; } urls[p.wantedUrl] = true; });
    return urls;
  }

  function evict() {
    if (cache.size <= CACHE_MAX) { return; }
    var keep = shownUrls(), drop = [], extra = cache.size - CACHE_MAX;
    cache.forEach(function (e, url) {
      if (drop.length < extra && (e.state === "ready" || e.state === "error") && !keep[url]) { drop.push(url); }
    });
    drop.forEach(function (url) { cache["delete"](url); });
  }

  function settle(e, ok) {
    if (e.state !== "loading") { return; }
    e.state = ok ? "ready" : "error";
    if (!ok) { cache["delete"](e.url); }  // try again next time it is wanted
    var waiters = e.waiters;
    e.waiters = [];
    waiters.forEach(function (cb) { cb(e); });
  }

  function start(e) {
    var i = queue.indexOf(e);
    if (i >= 0) { queue.splice(i, 1); }
    e.state = "loading";
    active += 1;
    state.loads += 1;
    var img = new Image();
    e.img = img;
    function done(ok) { active -= 1; settle(e, ok); pump(); }
    img.onload = function () {
      if (img.decode) { img.decode().then(function () { done(true); }, function () { done(true); }); }
      else { done(true); }
    };
    img.onerror = function () { done(false); };
    img.src = e.url;
  }

  function pump() { while (active < MAX_LOADS && queue.length) { start(queue.shift()); } }

  /* Ask for a frame; `urgent` starts it at once, otherwise it waits its turn in the prefetch queue. */
  function want(url, urgent, owner, cb) {
    var e = cache.get(url);
    if (e) {
      touch(e);
      if (e.state === "ready") { if (cb) { cb(e); } return e; }
      if (cb) { e.waiters.push(cb); }
      if (urgent && e.state === "queued") { start(e); }
      return e;
    }
    e = { url: url, img: null, state: "queued", waiters: cb ? [cb] : [], owner: owner };
    cache.set(url, e);
    if (urgent) { start(e); } else { queue.push(e); }
    evict();
    pump();
    return e;
  }

  function dropQueued(owner) {
    queue = queue.filter(function (e) {
      if (e.owner !== owner) { return true; }
      cache["delete"](e.url);
      return false;
    });
  }

  /* The <img> the page rendered with the HTML is frame 1 of the first series, default window. */
  var firstImg = document.getElementById("hv-first");
  if (firstImg && root.getAttribute("data-first-url")) {
    var firstEntry = { url: root.getAttribute("data-first-url"), img: firstImg, state: "loading", waiters: [] };
    cache.set(firstEntry.url, firstEntry);
    var markFirst = function () {
      if (state.firstFrameAt === null) {
        var raf = window.requestAnimationFrame || function (f) { setTimeout(f, 16); };
        raf(function () {
          if (state.firstFrameAt === null) {
            state.firstFrameAt = now();
            if (perf && perf.mark) { perf.mark("hv-first-frame"); }
          }
        });
      }
    };
    if (firstImg.complete && firstImg.naturalWidth > 0) { firstEntry.state = "loading"; settle(firstEntry, true); markFirst(); }
    else {
      firstImg.addEventListener("load", function () { settle(firstEntry, true); markFirst(); });
      firstImg.addEventListener("error", function () { settle(firstEntry, false); });
    }
  }

  /* ---------------------------------------------------------------- one viewport */

  function Pane(el, index) {
    this.el = el;
    this.index = index;
    this.stage = $(".hv-stage", el);
    this.canvas = $(".hv-canvas", el);
    this.ctx = this.canvas.getContext("2d");
    this.slider = $(".hv-slider", el);
    this.frameLabel = $(".hv-frame-label", el);
    this.wlLabel = $(".hv-wl", el);
    this.zoomLabel = $(".hv-zoom", el);
    this.measureLabel = $(".hv-measure-label", el);
    this.info = $(".hv-info-tl", el);
    this.status = $(".hv-status", el);
    this.title = $(".hv-pane-name", el);
    this.study = null;
    this.series = null;
    this.seriesIndex = 0;
    this.frames = [];
    this.pos = 0;
    this.direction = 1;
    this.preset = "default";
    this.win = null;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.entry = null;
    this.wantedUrl = "";
    this.measures = [];
    this.pending = null;
    this.drawn = 0;
    this.list = document.createElement("ol");
    this.list.className = "hv-series";
    this.list.hidden = true;
    document.getElementById("hv-series-lists").appendChild(this.list);
    this.bind();
  }

  Pane.prototype.load = function (study) {
    // A pane may be reused for another prior: start from a clean slate.
    dropQueued(this);
    this.study = study;
    this.entry = null;
    this.drawn = 0;
    this.measures = [];
    this.pending = null;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.preset = "default";
    this.win = null;
    this.status.textContent = "";
    if (state.active === this) { syncPresetButtons(); }
    if (this.title) {
      this.title.textContent = [study.study_date || "", study.modality, study.description,
        study.organisation ? study.organisation.name : ""].join(" ").trim();
    }
    this.buildSeriesList();
    if (!study.series.length) { this.status.textContent = TEXT.no_images; return; }
    this.setSeries(0);
  };

  Pane.prototype.buildSeriesList = function () {
    var self = this;
    this.list.innerHTML = "";
    this.study.series.forEach(function (s, k) {
      var li = document.createElement("li");
      var b = document.createElement("button");
      b.type = "button";
      b.setAttribute("data-series", String(k));
      var img = document.createElement("img");
      img.alt = "";
      img.setAttribute("data-src", s.thumbnail_url);
      img.width = 56;
      img.height = 56;
      var label = document.createElement("span");
      label.textContent = (s.series_number !== null ? "#" + s.series_number + " " : "") + s.modality + " " +
        (s.description || "") + " · " + s.frame_count + " " + TEXT.images;
      b.appendChild(img);
      b.appendChild(label);
      b.addEventListener("click", function () { activate(self); self.setSeries(k); self.stage.focus(); });
      li.appendChild(b);
      self.list.appendChild(li);
    });
  };

  Pane.prototype.showThumbnails = function () {
    var imgs = this.list.querySelectorAll("img[data-src]");
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].getAttribute("data-src")) { imgs[i].src = imgs[i].getAttribute("data-src"); }
      imgs[i].removeAttribute("data-src");
    }
  };

  Pane.prototype.setSeries = function (k) {
    var s = this.study.series[k];
    if (!s) { return; }
    this.seriesIndex = k;
    this.series = s;
    this.frames = [];
    for (var i = 0; i < s.instances.length; i++) {
      for (var f = 1; f <= s.instances[i].frames; f++) { this.frames.push({ inst: s.instances[i], frame: f }); }
    }
    this.pending = null;
    this.slider.max = String(Math.max(1, this.frames.length));
    var buttons = this.list.querySelectorAll("button");
    for (var j = 0; j < buttons.length; j++) { buttons[j].setAttribute("aria-current", j === k ? "true" : "false"); }
    this.info.textContent = (s.series_number !== null ? "#" + s.series_number + " " : "") + (s.description || "");
    this.show(0, 1);
  };

  Pane.prototype.url = function (i, win) {
    var f = this.frames[i];
    return frameUrl(this.study.study_instance_uid, this.series.series_instance_uid, f.inst.sop_instance_uid,
      f.frame, win === undefined ? this.win : win);
  };

  Pane.prototype.show = function (i, direction) {
    if (!this.frames.length) { return; }
    var self = this;
    i = Math.max(0, Math.min(this.frames.length - 1, i));
    if (direction) { this.direction = direction; }
    this.pos = i;
    this.slider.value = String(i + 1);
    this.updateLabels();
    var url = this.url(i);
    this.wantedUrl = url;
    want(url, true, this, function (e) {
      if (self.wantedUrl !== e.url) { return; }
      if (e.state === "error") { self.status.textContent = TEXT.failed; return; }
      self.status.textContent = "";
      self.entry = e;
      self.draw();
    });
    this.prefetch();
  };

  Pane.prototype.prefetch = function () {
    dropQueued(this);
    var d = this.direction, steps = [], k;
    for (k = 1; k <= AHEAD; k++) { steps.push(this.pos + d * k); }
    for (k = 1; k <= BEHIND; k++) { steps.push(this.pos - d * k); }
    for (k = 0; k < steps.length; k++) {
      if (steps[k] >= 0 && steps[k] < this.frames.length) { want(this.url(steps[k]), false, this, null); }
    }
  };

  Pane.prototype.step = function (n) { this.show(this.pos + n, n < 0 ? -1 : 1); };

  Pane.prototype.defaultWindow = function () {
    var f = this.frames[this.pos];
    return (f && f.inst.window) ? { c: f.inst.window.center, w: f.inst.window.width } : null;
  };

  Pane.prototype.setPreset = function (name, center, width) {
    this.preset = name;
    this.win = name === "default" ? null : { c: center, w: width };
    syncPresetButtons();
    this.show(this.pos);
  };

  Pane.prototype.updateLabels = function () {
    this.frameLabel.textContent = TEXT.frame + " " + (this.pos + 1) + " / " + this.frames.length;
    var w = this.win || this.defaultWindow();
    this.wlLabel.textContent = this.win ? "C " + round(w.c) + " W " + round(w.w)
      : TEXT["default"] + (w ? " (C " + round(w.c) + " W " + round(w.w) + ")" : "");
    this.zoomLabel.textContent = this.zoom !== 1 ? TEXT.zoom + " ×" + this.zoom.toFixed(2) : "";
  };

  /* Canvas geometry: the image fitted to the stage, then zoomed and panned (device pixels). */
  Pane.prototype.geometry = function () {
    var img = this.entry && this.entry.img;
    if (!img || !img.naturalWidth) { return null; }
    var cw = this.canvas.width, ch = this.canvas.height, iw = img.naturalWidth, ih = img.naturalHeight;
    var s = Math.min(cw / iw, ch / ih) * this.zoom;
    return { s: s, x: (cw - iw * s) / 2 + this.panX, y: (ch - ih * s) / 2 + this.panY, iw: iw, ih: ih, cw: cw, ch: ch };
  };

  Pane.prototype.resize = function () {
    var w = Math.max(1, Math.round(this.stage.clientWidth * dpr)), h = Math.max(1, Math.round(this.stage.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
  };

  Pane.prototype.frameKey = function () {
    var f = this.frames[this.pos];
    return f ? f.inst.sop_instance_uid + "#" + f.frame : "";
  };

  Pane.prototype.draw = function () {
    this.resize();
    var ctx = this.ctx, g = this.geometry();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!g) { return; }
    ctx.imageSmoothingEnabled = g.s < 4;
    ctx.drawImage(this.entry.img, g.x, g.y, g.iw * g.s, g.ih * g.s);
    var key = this.frameKey(), self = this, last = "";
    this.measures.forEach(function (m) {
      if (m.key === key) { self.drawMeasure(g, m.a, m.b, m.label); last = m.label; }
    });
    if (this.pending && this.pending.key === key) { this.drawMeasure(g, this.pending.a, null, ""); }
    this.measureLabel.textContent = last;
    this.updateLabels();
    this.drawn += 1;
    if (this.canvas.hidden) {
      this.canvas.hidden = false;
      if (state.canvasAt === null) { state.canvasAt = now(); }
      if (this.index === 0 && firstImg) { firstImg.hidden = true; }
    }
    if (this.drawn === 1) { this.showThumbnails(); }
  };

  Pane.prototype.drawMeasure = function (g, a, b, label) {
    var ctx = this.ctx, r = 3 * dpr;
    ctx.strokeStyle = "#22d3ee";
    ctx.fillStyle = "#22d3ee";
    ctx.lineWidth = 1.5 * dpr;
    var ax = g.x + a.x * g.s, ay = g.y + a.y * g.s;
    ctx.fillRect(ax - r, ay - r, 2 * r, 2 * r);
    if (!b) { return; }
    var bx = g.x + b.x * g.s, by = g.y + b.y * g.s;
    ctx.beginPath();
    ctx.moveTo(ax, ay);
    ctx.lineTo(bx, by);
    ctx.stroke();
    ctx.fillRect(bx - r, by - r, 2 * r, 2 * r);
    ctx.font = (13 * dpr) + "px sans-serif";
    ctx.lineWidth = 3 * dpr;
    ctx.strokeStyle = "#000";
    ctx.strokeText(label, bx + 6 * dpr, by - 6 * dpr);
    ctx.fillText(label, bx + 6 * dpr, by - 6 * dpr);
  };

  /* Stage (CSS) coordinates -> image pixel coordinates. */
  Pane.prototype.toImage = function (evt) {
    var g = this.geometry();
    if (!g) { return null; }
    var rect = this.canvas.getBoundingClientRect();
    var x = ((evt.clientX - rect.left) * dpr - g.x) / g.s, y = ((evt.clientY - rect.top) * dpr - g.y) / g.s;
    return { x: x, y: y, inside: x >= 0 && y >= 0 && x <= g.iw && y <= g.ih };
  };

  Pane.prototype.distance = function (a, b) {
    var f = this.frames[this.pos], img = this.entry.img;
    var sx = (f.inst.columns || img.naturalWidth) / img.naturalWidth, sy = (f.inst.rows || img.naturalHeight) / img.naturalHeight;
    var dx = (b.x - a.x) * sx, dy = (b.y - a.y) * sy;
    var ps = f.inst.pixel_spacing;  // [row spacing (vertical), column spacing (horizontal)] in mm
    if (ps) { return (Math.sqrt(Math.pow(dx * ps[1], 2) + Math.pow(dy * ps[0], 2))).toFixed(1) + " mm"; }
    return Math.sqrt(dx * dx + dy * dy).toFixed(0) + " px (" + TEXT.no_spacing + ")";
  };

  Pane.prototype.measureClick = function (evt) {
    var p = this.toImage(evt);
    if (!p || !p.inside) { return; }
    var key = this.frameKey();
    if (!this.pending || this.pending.key !== key) { this.pending = { key: key, a: p }; }
    else {
      this.measures.push({ key: key, a: this.pending.a, b: p, label: this.distance(this.pending.a, p) });
      this.pending = null;
    }
    this.draw();
  };

  Pane.prototype.zoomBy = function (factor, evt) {
    var g = this.geometry();
    if (!g) { return; }
    var mx = g.cw / 2, my = g.ch / 2;
    if (evt) {
      var rect = this.canvas.getBoundingClientRect();
      mx = (evt.clientX - rect.left) * dpr;
      my = (evt.clientY - rect.top) * dpr;
    }
    var u = (mx - g.x) / g.s, v = (my - g.y) / g.s;
    this.zoom = Math.max(0.25, Math.min(16, this.zoom * factor));
    var s2 = Math.min(g.cw / g.iw, g.ch / g.ih) * this.zoom;
    this.panX = mx - u * s2 - (g.cw - g.iw * s2) / 2;
    this.panY = my - v * s2 - (g.ch - g.ih * s2) / 2;
    this.draw();
  };

  Pane.prototype.reset = function () {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.measures = [];
    this.pending = null;
    this.preset = "default";
    this.win = null;
    syncPresetButtons();
    this.show(this.pos);
  };

  /* Right-drag window/level: at most one re-rendered frame in flight, always for the latest values. */
  Pane.prototype.dragWindow = function (c, w) {
    var self = this;
    this.preset = "custom";
    this.win = { c: c, w: Math.max(1, w) };
    syncPresetButtons();
    this.updateLabels();
    if (this.wlBusy) { this.wlDirty = true; return; }
    this.wlBusy = true;
    this.wlDirty = false;
    var url = this.url(this.pos);
    this.wantedUrl = url;
    want(url, true, this, function (e) {
      self.wlBusy = false;
      if (e.state === "ready" && self.wantedUrl === e.url) { self.entry = e; self.draw(); }
      if (self.wlDirty) { self.dragWindow(self.win.c, self.win.w); }
    });
  };

  Pane.prototype.bind = function () {
    var self = this, stage = this.stage, drag = null;
    stage.addEventListener("mousedown", function (evt) {
      activate(self);
      if (evt.button === 2) {
        var w0 = self.win || self.defaultWindow() || DEFAULT_WINDOW;
        drag = { kind: "wl", x: evt.clientX, y: evt.clientY, c: w0.c, w: w0.w };
      } else if (evt.button === 0) {
        drag = { kind: state.measuring ? "click" : "pan", x: evt.clientX, y: evt.clientY, px: self.panX, py: self.panY, moved: false };
      }
      evt.preventDefault();
      stage.focus();
    });
    window.addEventListener("mousemove", function (evt) {
      if (!drag) { return; }
      var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; }
      if (drag.kind === "wl") {
        var k = Math.max(1, drag.w / 256);
        self.dragWindow(drag.c + dy * k, drag.w + dx * k);
      } else if (drag.kind === "pan" || (drag.kind === "click" && drag.moved)) {
        self.panX = drag.px + dx * dpr;
        self.panY = drag.py + dy * dpr;
        self.draw();
      }
    });
    window.addEventListener("mouseup", function (evt) {
      if (!drag) { return; }
      var d = drag;
      drag = null;
      if (d.kind === "click" && !d.moved) { self.measureClick(evt); }
      if (d.kind === "wl") { self.prefetch(); }
    });
    stage.addEventListener("contextmenu", function (evt) { evt.preventDefault(); });
    stage.addEventListener("wheel", function (evt) {
      evt.preventDefault();
      activate(self);
      if (evt.ctrlKey) { self.zoomBy(evt.deltaY < 0 ? 1.15 : 1 / 1.15, evt); }
      else if (evt.deltaY) { self.step(evt.deltaY > 0 ? 1 : -1); }
    }, { passive: false });
    stage.addEventListener("focus", function () { activate(self); });
    this.slider.addEventListener("input", function () {
      var to = parseInt(self.slider.value, 10) - 1;
      self.show(to, to < self.pos ? -1 : 1);
    });
  };

  /* ---------------------------------------------------------------- the page */

  var panesBox = document.getElementById("hv-panes");

  function activate(pane) {
    if (state.active === pane) { return; }
    state.active = pane;
    state.panes.forEach(function (p) {
      p.el.className = p.el.className.replace(/\s*hv-active/g, "") + (p === pane ? " hv-active" : "");
      p.list.hidden = p !== pane;
    });
    syncPresetButtons();
  }

  function syncPresetButtons() {
    var pane = state.active, buttons = root.querySelectorAll(".hv-preset");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", pane && buttons[i].getAttribute("data-preset") === pane.preset ? "true" : "false");
    }
  }

  function presetButton(n) { return root.querySelectorAll(".hv-preset")[n]; }

  function applyPreset(button) {
    if (!button || !state.active) { return; }
    state.active.setPreset(button.getAttribute("data-preset"), parseFloat(button.getAttribute("data-center")),
      parseFloat(button.getAttribute("data-width")));
  }

  function setMeasuring(on) {
    state.measuring = on;
    document.getElementById("hv-measure").setAttribute("aria-pressed", on ? "true" : "false");
    root.className = root.className.replace(/\s*hv-measuring/g, "") + (on ? " hv-measuring" : "");
    if (!on) { state.panes.forEach(function (p) { if (p.pending) { p.pending = null; p.draw(); } }); }
  }

  var help = document.getElementById("hv-help");
  function toggleHelp(open) {
    help.hidden = open === undefined ? !help.hidden : !open;
    if (!help.hidden) { $("button", help).focus(); } else if (state.active) { state.active.stage.focus(); }
  }

  function getJson(url) {
    // No extra headers: the page preloads the study JSON and this request must match that preload.
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) { throw new Error(r.status); }
      return r.json();
    });
  }

  function fillPriors(study) {
    var list = document.getElementById("hv-priors");
    list.innerHTML = "";
    if (study.patient_match === "unmatched" || !study.priors.length) {
      var li = document.createElement("li");
      li.className = "muted";
      li.textContent = study.patient_match === "unmatched" ? TEXT.unmatched_priors
        : study.priors_withheld ? TEXT.withheld_priors : TEXT.no_priors;
      list.appendChild(li);
      return;
    }
    study.priors.forEach(function (p) {
      var li = document.createElement("li");
      var text = document.createElement("div");
      text.textContent = [p.study_date || "", p.modality, p.description, p.organisation ? p.organisation.name : ""].join(" ");
      li.appendChild(text);
      var b = document.createElement("button");
      b.type = "button";
      b.className = "hv-open-prior";
      b.setAttribute("data-uid", p.study_instance_uid);
      b.textContent = TEXT.compare;
      b.addEventListener("click", function () { openPrior(p.study_instance_uid); });
      li.appendChild(b);
      var a = document.createElement("a");
      a.href = p.viewer_url;
      a.textContent = " " + TEXT.open;
      li.appendChild(a);
      list.appendChild(li);
    });
  }

  function openPrior(uid) {
    var pane = state.panes[1];
    if (!pane) {
      var tpl = document.getElementById("hv-pane-template");
      var el = (tpl.content ? tpl.content : tpl).querySelector(".hv-pane").cloneNode(true);
      el.id = "hv-pane-1";
      panesBox.appendChild(el);
      pane = new Pane(el, 1);
      state.panes.push(pane);
      $(".hv-close", el).addEventListener("click", closePrior);
      state.panes[0].draw();
    }
    activate(pane);
    pane.status.textContent = TEXT.loading;
    getJson("/api/v1/imaging/studies/" + enc(uid)).then(function (study) {
      pane.status.textContent = "";
      pane.load(study);
      pane.stage.focus();
    }, function () { pane.status.textContent = TEXT.failed; });
  }

  function closePrior() {
    var pane = state.panes[1];
    if (!pane) { return; }
    dropQueued(pane);
    pane.el.parentNode.removeChild(pane.el);
    pane.list.parentNode.removeChild(pane.list);
    state.panes.pop();
    state.active = null;
    activate(state.panes[0]);
    state.panes[0].draw();
    state.panes[0].stage.focus();
  }

  root.addEventListener("click", function (evt) {
    var t = evt.target;
    while (t && t !== root && !t.getAttribute("data-act") && !t.getAttribute("data-preset")) { t = t.parentNode; }
    if (!t || t === root) { return; }
    if (t.getAttribute("data-preset")) { applyPreset(t); return; }
    var act = t.getAttribute("data-act"), pane = state.active;
    if (act === "help" || act === "help-close") { toggleHelp(act === "help"); return; }
    if (act === "measure") { setMeasuring(!state.measuring); return; }
    if (!pane) { return; }
    if (act === "zoom-in") { pane.zoomBy(1.25); }
    if (act === "zoom-out") { pane.zoomBy(1 / 1.25); }
    if (act === "reset") { pane.reset(); }
  });

  document.addEventListener("keydown", function (evt) {
    var t = evt.target, tag = t && t.tagName ? t.tagName.toLowerCase() : "";
    if (evt.altKey || evt.metaKey || evt.ctrlKey) { return; }  // leave the browser's own shortcuts alone
    if (!help.hidden) {
      if (evt.key === "Escape" || evt.key === "?") { toggleHelp(false); evt.preventDefault(); }
      return;
    }
    if (tag === "textarea" || tag === "select" || (tag === "input" && t.type !== "range")) { return; }
    var pane = state.active, key = evt.key, handled = true;
    // The slider moves by itself with the arrow keys; its `input` event shows the frame.
    var onSlider = tag === "input" && t.type === "range";
    if (key === "?") { toggleHelp(true); }
    else if (key === "Escape") { setMeasuring(false); }
    else if (key === "m" || key === "M") { setMeasuring(!state.measuring); }
    else if (!pane || !pane.frames.length) { handled = false; }
    else if (onSlider && /^(Arrow|Page|Home|End)/.test(key)) { handled = false; }
    else if (key === "ArrowDown" || key === "ArrowRight") { pane.step(1); }
    else if (key === "ArrowUp" || key === "ArrowLeft") { pane.step(-1); }
    else if (key === "PageDown") { pane.step(10); }
    else if (key === "PageUp") { pane.step(-10); }
    else if (key === "Home") { pane.show(0, 1); }
    else if (key === "End") { pane.show(pane.frames.length - 1, -1); }
    else if (key.length === 1 && key >= "1" && key <= "5") { applyPreset(presetButton(parseInt(key, 10) - 1)); }
    else if (key === "+" || key === "=") { pane.zoomBy(1.25); }
    else if (key === "-" || key === "_") { pane.zoomBy(1 / 1.25); }
    else if (key === "r" || key === "R") { pane.reset(); }
    else if (key === "[") { pane.setSeries(Math.max(0, pane.seriesIndex - 1)); }
    else if (key === "]") { pane.setSeries(Math.min(pane.study.series.length - 1, pane.seriesIndex + 1)); }
    else if ((key === "v" || key === "V") && state.panes.length > 1) {
      activate(state.panes[(state.panes.indexOf(pane) + 1) % state.panes.length]);
      state.active.stage.focus();
    } else { handled = false; }
    if (handled) { evt.preventDefault(); }
  });

  window.addEventListener("resize", function () { state.panes.forEach(function (p) { p.draw(); }); });

  var main = new Pane(document.getElementById("hv-pane-0"), 0);
  state.panes.push(main);
  activate(main);
  main.list.hidden = false;
  var loading = $(".hv-loading");
  getJson(root.getAttribute("data-api")).then(function (study) {
    if (loading) { loading.parentNode.removeChild(loading); }
    main.load(study);
    fillPriors(study);
  }, function () {
    if (loading) { loading.textContent = TEXT.failed; }
    main.status.textContent = TEXT.failed;
  });
})();
