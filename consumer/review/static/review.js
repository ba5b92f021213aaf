// Keyboard shortcuts for the review queue: the key of a button (data-key) clicks it.
// Timings of key press -> next product shown are kept in window.shelverTimings (read by the browser test).
(function () {
  window.shelverTimings = [];
  var pressed = null;
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    var item = document.getElementById("item");
    if (!item || item.classList.contains("busy")) return;
    var button = item.querySelector('button[data-key="' + CSS.escape(e.key.toLowerCase()) + '"]');
    if (!button) return;
    e.preventDefault();
    pressed = performance.now();
    item.classList.add("busy");
    button.click();
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    if (pressed !== null && e.target && e.target.id === "item") {
      window.shelverTimings.push(performance.now() - pressed);
      pressed = null;
    }
  });
  document.addEventListener("htmx:responseError", function () { pressed = null; });
})();
