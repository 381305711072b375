// The lens view (lmscope.report.html.lens_view): points by positions, each cell the lens's first
// choice there, coloured by the probability it gives the true next token; a slider walks
// through the checkpoints and hovering a cell reads out its numbers.
document.querySelectorAll(".lens").forEach(function (view) {
  try { showLens(view); } catch (e) {
    view.querySelector(".lens-name").textContent = "cannot show this view: " + e;
  }
});
function showLens(view) {
  var data = JSON.parse(view.querySelector("script").textContent);
  var slider = view.querySelector(".lens-checkpoint");
  var readout = view.querySelector(".lens-readout");
  var rows = view.querySelectorAll("tbody tr");
  function draw() {
    var c = +slider.value, point = data.checkpoints[c];
    view.querySelector(".lens-name").textContent = point[0] + " (iteration " + point[1] + ")";
    data.cells[c].forEach(function (row, i) {
      rows[i].querySelectorAll("td.cell").forEach(function (td, t) {
        var cell = row[t];
        td.textContent = cell[0];
        td.style.background = "rgba(40, 120, 200, " + cell[1].toFixed(2) + ")";
        td.style.color = cell[1] > 0.6 ? "white" : "";
        td.dataset.text = data.points[i] + ", position " + t + ": first choice '" + cell[0] +
          "', p(next) " + cell[1].toFixed(3) + ", KL to the output " + cell[2].toFixed(3) +
          " bits";
      });
    });
  }
  view.querySelector("tbody").addEventListener("mouseover", function (e) {
    if (e.target.dataset && e.target.dataset.text) readout.textContent = e.target.dataset.text;
  });
  slider.addEventListener("input", draw);
  draw();
}
