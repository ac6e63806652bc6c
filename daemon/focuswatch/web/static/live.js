// focuswatch console: keep the page current while the wafer is imaged.
// Polls /api/generation; when it is not the generation the page shows (or always, on
// the Now page) the page is fetched again and its <main> swapped in. A page made in
// the last second may be older than the generation polled (the server keeps a polled
// page up to a second): it carries its own generation, so the next poll asks again.
// Never while someone is typing in a form.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var main = document.getElementById("live");
  if (!main) { return; }
  var mode = main.getAttribute("data-live");
  if (mode === "off") { return; }
  var busy = false;

  function typing() {
    var el = document.activeElement;
    return el && main.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT" || el.tagName === "TEXTAREA");
  }

  function refresh() {
    return fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null || typing()) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var clock = doc.getElementById("clock");
        // Only a real change replaces the content (fewer swaps under a reader's eyes).
        if (fresh && fresh.innerHTML !== main.innerHTML) { main.innerHTML = fresh.innerHTML; }
        if (fresh) { main.setAttribute("data-generation", fresh.getAttribute("data-generation") || ""); }
        if (clock && document.getElementById("clock")) {
          document.getElementById("clock").textContent = clock.textContent;
        }
      });
  }

  function poll() {
    if (busy) { return; }
    busy = true;
    fetch("/api/generation", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var changed = String(data.generation) !== main.getAttribute("data-generation");
        if (changed || mode === "always") { return refresh(); }
        return null;
      })
      .catch(function () { /* the service may be restarting: try again next time */ })
      .then(function () { busy = false; });
  }

  poll();
  window.setInterval(poll, POLL_MS);
})();
