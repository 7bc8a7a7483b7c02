// pgqueue dashboard: refresh the parts of a page marked data-refresh="URL" every
// data-every seconds by fetching a server-rendered HTML fragment (no full page reloads),
// ask before the actions marked data-confirm, and skip the login form when this
// browser's cookie still holds a live key. Plain JavaScript, nothing to build.
"use strict";
(function () {
  var live = document.getElementById("live");

  function say(text, bad) {
    if (!live) return;
    live.textContent = text;
    live.classList.toggle("bad", !!bad);
  }

  function toLogin() {
    var next = location.pathname + location.search;
    // The dashboard's own path (data-base): /dashboard, or under the prefix it is mounted at.
    var base = document.body.getAttribute("data-base") || "/dashboard";
    location.assign(base + "/login?next=" + encodeURIComponent(next));
  }

  function watch(el) {
    var url = el.getAttribute("data-refresh");
    var every = 1000 * (Number(el.getAttribute("data-every")) || 5);
    var busy = false;
    var timer = null;
    function finished() { return el.querySelector("[data-final]") !== null; }
    function tick() {
      if (busy || document.hidden) return;
      if (finished()) { clearInterval(timer); return; }
      busy = true;
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (response.status === 401) { toLogin(); return null; }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          el.innerHTML = html;
          say("live · updated " + new Date().toLocaleTimeString(), false);
        })
        .catch(function (error) {
          say("refresh failed (" + error.message + "), retrying", true);
        })
        .finally(function () { busy = false; });
    }
    if (!finished()) timer = setInterval(tick, every);
  }

  var parts = document.querySelectorAll("[data-refresh]");
  for (var i = 0; i < parts.length; i++) watch(parts[i]);
  if (parts.length) say("live · every " + (Number(parts[0].getAttribute("data-every")) || 5) + " s", false);

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // A link from another site does not carry the SameSite=Strict cookie, so it lands
  // here; this page's own request does carry it: if the key is still good, go on.
  var probe = document.getElementById("session-probe");
  if (probe) {
    fetch(probe.getAttribute("data-probe"), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.ok) location.replace(probe.getAttribute("data-next"));
      })
      .catch(function () {});
  }
})();
