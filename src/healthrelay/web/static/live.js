/* Live events for signed-in pages (plain JS, no build step).
 *
 * Opens an EventSource to /notifications/stream, keeps the inbox badge (#inbox-count) current,
 * shows urgent notifications as a toast (role="alert") that stays until dismissed, and re-dispatches
 * every event on document.body as a CustomEvent "hr-live" with the event data in `detail`, so a page
 * can refresh a fragment with  hx-trigger="hr-live from:body"  (or filter: hr-live[detail.type=='x']).
 * The browser reconnects by itself and sends Last-Event-ID; the server replays missed inbox items.
 */
(function () {
  "use strict";
  if (!window.EventSource || !document.body) { return; }

  var zh = (document.documentElement.lang || "zh").indexOf("zh") === 0;
  var text = zh
    ? { close: "关闭", open: "打开", urgent: "紧急消息", unread: "条未读消息" }
    : { close: "Dismiss", open: "Open", urgent: "Urgent message", unread: "unread messages" };
  var unread = 0;
  var retryDelay = 3000;
  var lastId = "";
  var current = null;

  function setUnread(n) {
    unread = Math.max(0, n | 0);
    var badge = document.getElementById("inbox-count");
    if (!badge) { return; }
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.hidden = unread === 0;
    badge.setAttribute("aria-label", unread + " " + text.unread);
  }

  function csrfToken() {
    var field = document.querySelector('input[name="csrf_token"]');
    return field ? field.value : "";
  }

  function toastBox() {
    var box = document.getElementById("hr-toasts");
    if (!box) {
      box = document.createElement("div");
      box.id = "hr-toasts";
      box.className = "toasts";
      document.body.appendChild(box);
    }
    return box;
  }

  function showToast(note) {
    if (document.getElementById("toast-" + note.id)) { return; }
    var toast = document.createElement("div");
    toast.className = "toast";
    toast.id = "toast-" + note.id;
    toast.setAttribute("role", "alert");
    var heading = document.createElement("strong");
    heading.textContent = text.urgent + "：" + note.title;
    toast.appendChild(heading);
    if (note.body) {
      var body = document.createElement("p");
      body.textContent = note.body;
      toast.appendChild(body);
    }
    var actions = document.createElement("div");
    actions.className = "toast-actions";
    // Opening goes through the inbox, which marks the message read and follows its link.
    var form = document.createElement("form");
    form.method = "post";
    form.action = "/inbox/" + encodeURIComponent(note.id) + "/open";
    var token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf_token";
    token.value = csrfToken();
    form.appendChild(token);
    var open = document.createElement("button");
    open.type = "submit";
    open.textContent = text.open;
    form.appendChild(open);
    actions.appendChild(form);
    var close = document.createElement("button");
    close.type = "button";
    close.className = "secondary";
    close.textContent = text.close;
    close.addEventListener("click", function () { toast.remove(); });
    actions.appendChild(close);
    toast.appendChild(actions);
    toastBox().appendChild(toast);
  }

  function handle(data) {
    if (data.type === "hello" || data.type === "resync" || data.type === "inbox.read") {
      setUnread(data.unread);
    } else if (data.type === "notification") {
      // Replayed items are already in the unread count the hello just gave.
      if (!data.replay) { setUnread(unread + 1); }
      if (data.urgent && !data.read) { showToast(data); }
    }
    document.body.dispatchEvent(new CustomEvent("hr-live", { detail: data }));
  }

  function received(message) {
    if (message.lastEventId) { lastId = message.lastEventId; }
    var data;
    try { data = JSON.parse(message.data); } catch (e) { return; }
    if (data.truncated && data.type === "notification") {
      // Too large for the wire: fetch the whole item.
      fetch("/api/v1/notifications/" + encodeURIComponent(data.id), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : data; })
        .then(function (full) { full.type = "notification"; full.replay = data.replay; handle(full); })
        .catch(function () { handle(data); });
      return;
    }
    handle(data);
  }

  function connect() {
    // A fresh EventSource forgets the last id, so say it in the URL; the server replays what came after.
    var url = "/notifications/stream" + (lastId ? "?last_event_id=" + encodeURIComponent(lastId) : "");
    var source = new EventSource(url);
    current = source;
    source.onopen = function () { retryDelay = 3000; };
    source.onmessage = received;
    source.onerror = function () {
      // A dropped connection retries by itself; a refused one (signed out, server restarting) is CLOSED.
      if (source.readyState === EventSource.CLOSED && current === source) {
        current = null;
        window.setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 60000);
      }
    };
  }

  window.addEventListener("pagehide", function () { if (current) { current.close(); current = null; } });
  window.addEventListener("pageshow", function (e) { if (e.persisted && !current) { connect(); } });
  connect();
})();
