// The attribution view (lmscope.report.html.attribution_view): a slider walks through the
// checkpoints, recolouring each prompt's characters by |normalized score| (opacity relative to
// the row's largest) and updating the predicted next character.
document.querySelectorAll(".attribution").forEach(function (view) {
  try { showAttribution(view); } catch (e) {
    view.querySelector(".attribution-name").textContent = "cannot show this view: " + e;
  }
});
function showAttribution(view) {
  var data = JSON.parse(view.querySelector("script").textContent);
  var slider = view.querySelector(".attribution-checkpoint");
  var rows = view.querySelectorAll("tbody tr");
  function draw() {
    var c = +slider.value, point = data.checkpoints[c];
    view.querySelector(".attribution-name").textContent =
      point[0] + " (iteration " + point[1] + ")";
    data.rows.forEach(function (row, i) {
      var values = row.values[c], top = 0;
      values.forEach(function (v) { top = Math.max(top, Math.abs(v)); });
      var tr = rows[i];
      tr.querySelectorAll(".chars span").forEach(function (s, k) {
        var a = top ? Math.abs(values[k]) / top : 0;
        s.style.background = "rgba(220, 80, 40, " + a.toFixed(2) + ")";
        s.title = row.method + ": " + (values[k] >= 0 ? "+" : "") + values[k].toFixed(3);
      });
      tr.querySelector(".predicted").textContent = row.targets[c][0] + " (" +
        row.targets[c][1].toFixed(2) + ")";
    });
  }
  slider.addEventListener("input", draw);
  draw();
}
