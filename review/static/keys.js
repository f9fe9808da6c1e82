// Keyboard shortcuts: N claim next, C claim this draft, A approve and sign,
// E edit, Ctrl+Enter approve from the editor, Esc leave the editor, ? help.
(function () {
  "use strict";
  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" ||
      target.tagName === "SELECT" || target.isContentEditable);
  }
  function submit(id) {
    var el = document.getElementById(id);
    if (!el) return false;
    if (el.tagName === "FORM") { el.requestSubmit(); } else if (!el.disabled) { el.click(); }
    return true;
  }
  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && typing(event.target)) {
      if (submit("approve")) event.preventDefault();
      return;
    }
    if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    var handled = true;
    switch (event.key) {
      case "n": case "N": handled = submit("claim-next-form"); break;
      case "c": case "C": handled = submit("claim-form") || submit("claim-next-form"); break;
      case "a": case "A": handled = submit("approve"); break;
      case "e": case "E":
        var editor = document.getElementById("findings");
        if (editor) { editor.focus(); } else { handled = false; }
        break;
      case "?":
        var help = document.getElementById("keys-help");
        if (help) help.hidden = !help.hidden;
        break;
      default: handled = false;
    }
    if (handled) event.preventDefault();
  });
})();
