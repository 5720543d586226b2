// Live updates: on each server-sent `change`, refetch this page and swap <main>.
// Debounced to one refetch per 250 ms; reconnects are EventSource's own.
(function () {
  "use strict";
  var pending = null;
  function refresh() {
    pending = null;
    if (document.activeElement && document.activeElement.tagName === "INPUT") return;
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) document.getElementById("main").innerHTML = fresh.innerHTML;
      });
  }
  var source = new EventSource("/api/v1/events/stream");
  source.addEventListener("change", function () {
    if (!pending) pending = setTimeout(refresh, 250);
  });
  source.addEventListener("hello", function () { window.servalLive = true; });
  // While the stream is down, refresh every 5 s so the stale banner shows its age.
  setInterval(function () { if (source.readyState !== 1) refresh(); }, 5000);
})();
