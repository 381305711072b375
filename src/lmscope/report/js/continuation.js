// The continuation view (lmscope.report.html.continuation_view): for the chosen prompt, method
// and checkpoint, a table of the generated tokens (rows) by the prompt and the tokens written
// before them (columns), each cell coloured by its |normalized score| relative to the row's
// largest; hovering a cell reads out the step, the input token and the score.
document.querySelectorAll(".continuation").forEach(function (view) {
  try { showContinuation(view); } catch (e) {
    view.querySelector(".continuation-readout").textContent = "cannot show this view: " + e;
  }
});
function showContinuation(view) {
  var data = JSON.parse(view.querySelector("script").textContent);
  var promptSelect = view.querySelector(".continuation-prompt");
  var methodSelect = view.querySelector(".continuation-method");
  var slider = view.querySelector(".continuation-checkpoint");
  var readout = view.querySelector(".continuation-readout");
  var holder = view.querySelector(".continuation-table");
  function text(s) { return document.createTextNode(s); }
  function draw() {
    var prompt = data.prompts[+promptSelect.value];
    slider.max = prompt.checkpoints.length - 1;
    var point = prompt.checkpoints[Math.min(+slider.value, prompt.checkpoints.length - 1)];
    var method = methodSelect.value, matrix = point.normalized[method], T = prompt.T;
    view.querySelector(".continuation-name").textContent =
      point.label + " (iteration " + point.iteration + ")";
    var table = document.createElement("table"), head = table.insertRow();
    head.appendChild(document.createElement("th")).appendChild(text("writes (p, bits)"));
    for (var i = 0; i < matrix[0].length; i++) {
      var th = head.appendChild(document.createElement("th"));
      th.className = "pos" + (i === T ? " first-written" : "");
      th.appendChild(text(point.tokens[i]));
    }
    matrix.forEach(function (row, j) {
      var tr = table.insertRow(), top = 0;
      row.forEach(function (v) { if (v !== null) top = Math.max(top, Math.abs(v)); });
      tr.appendChild(document.createElement("th")).appendChild(text(
        point.tokens[T + j] + " (" + point.prob[j].toFixed(2) + ", " +
        point.entropy_bits[j].toFixed(1) + ")"));
      row.forEach(function (v, i) {
        var td = tr.insertCell();
        if (i === T) td.className = "first-written";
        if (v === null) return;
        td.style.background = "rgba(220, 80, 40, " + (top ? Math.abs(v) / top : 0).toFixed(2) + ")";
        td.dataset.text = "step " + j + " writes " + point.tokens[T + j] + " (p " +
          point.prob[j].toFixed(3) + ", entropy " + point.entropy_bits[j].toFixed(2) +
          " bits); input " + i + " " + point.tokens[i] + (i < T ? " (prompt)" : " (written)") +
          ": " + method + " " + (v >= 0 ? "+" : "") + v.toFixed(3) + " of the row";
      });
    });
    holder.replaceChildren(table);
  }
  holder.addEventListener("mouseover", function (e) {
    if (e.target.dataset && e.target.dataset.text) readout.textContent = e.target.dataset.text;
  });
  [promptSelect, methodSelect].forEach(function (s) { s.addEventListener("change", draw); });
  slider.addEventListener("input", draw);
  draw();
}
