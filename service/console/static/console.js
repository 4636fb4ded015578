// The console's one script: a file, since the policy runs no inline script.
// Once a form is sent, its buttons stay disabled: a double click decides once.
document.querySelectorAll("form").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    var button = event.submitter;
    if (button && button.dataset.needsNote === "yes") {
      var note = form.querySelector("textarea[name=note]");
      if (note && !note.value.trim()) {
        event.preventDefault();
        note.focus();
        note.setAttribute("placeholder", "A note is required for '" + button.value + "'.");
        return;
      }
    }
    if (button && button.name) {
      var keep = document.createElement("input");
      keep.type = "hidden"; keep.name = button.name; keep.value = button.value;
      form.appendChild(keep);
    }
    setTimeout(function () { form.querySelectorAll("button").forEach(function (b) { b.disabled = true; }); }, 0);
  });
});
