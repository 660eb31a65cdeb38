// The live feed: each line of .cutover/events.jsonl, as the CLI prints it.
// Text only (textContent): nothing from the feed is ever parsed as HTML.
"use strict";
(function () {
  var feed = document.getElementById("feed");
  if (!feed || !window.EventSource) { return; }
  var source = new EventSource("/_admin/events");
  // Says whether the feed follows: lines written while it does not are
  // shown on the next page load.
  source.addEventListener("open", function () { feed.dataset.live = "on"; });
  source.addEventListener("error", function () { feed.dataset.live = "off"; });
  source.addEventListener("feed", function (e) {
    var line;
    try { line = JSON.parse(e.data); } catch (err) { return; }
    if (!line.text) { return; }
    feed.appendChild(document.createTextNode(line.time + " " + line.text + "\n"));
    feed.scrollTop = feed.scrollHeight;
  });
  source.addEventListener("lagged", function () {
    feed.appendChild(document.createTextNode("(some lines were skipped)\n"));
  });
})();
