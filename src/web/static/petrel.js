// petrel webmail: new mail without a reload. Everything works without
// this file; with it, the message list follows the folder's changes
// (server-sent events from /events) and reloads itself when the folder
// changed and nothing is selected or typed.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.folder || !window.EventSource) { return; }
  var list = document.querySelector("table.messages");
  var busy = function () {
    return document.querySelector("table.messages input:checked") !== null ||
      (document.activeElement && /INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName));
  };
  var source = new EventSource("/events?f=" + encodeURIComponent(main.dataset.folder) +
    "&modseq=" + encodeURIComponent(main.dataset.modseq || "0"));
  // A click that leaves the page (a link, a form) changes the folder on
  // the server before the next page arrives: that change must not reload
  // this page and cancel the navigation.
  var leaving = false;
  window.addEventListener("beforeunload", function () { leaving = true; source.close(); });
  document.addEventListener("submit", function () { leaving = true; }, true);
  source.addEventListener("changed", function (e) {
    var d = JSON.parse(e.data);
    document.querySelectorAll("nav.folders a[data-folder]").forEach(function (a) {
      if (a.dataset.folder === d.folder) {
        var c = a.parentNode.querySelector(".count");
        if (d.unseen > 0) {
          if (!c) { c = document.createElement("span"); c.className = "count"; a.parentNode.appendChild(document.createTextNode(" ")); a.parentNode.appendChild(c); }
          c.textContent = d.unseen;
        } else if (c) { c.remove(); }
      }
    });
    if (list && !leaving && d.folder === main.dataset.folder && !busy()) { window.location.reload(); }
  });
})();
