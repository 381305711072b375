// The similarity view (lmscope.report.html.similarity_view): one table per pair of runs, layers
// of one by layers of the other, each cell coloured by their linear CKA; a slider walks through
// the checkpoints the runs share and hovering a cell reads it out.
document.querySelectorAll(".similarity").forEach(function (view) {
  try { showSimilarity(view); } catch (e) {
    view.querySelector(".similarity-name").textContent = "cannot show this view: " + e;
  }
});
function showSimilarity(view) {
  var data = JSON.parse(view.querySelector("script").textContent);
  var slider = view.querySelector(".similarity-checkpoint");
  var readout = view.querySelector(".similarity-readout");
  var tables = view.querySelectorAll(".pair table");
  function draw() {
    var c = +slider.value, it = data.iterations[c];
    view.querySelector(".similarity-name").textContent = /^\d+$/.test(it) ? "iteration " + it : it;
    data.pairs.forEach(function (pair, p) {
      tables[p].querySelectorAll("tr").forEach(function (tr, i) {
        if (i === 0) return;  // the header row
        tr.querySelectorAll("td.cell").forEach(function (td, j) {
          var v = pair.cka[c][i - 1][j];
          td.textContent = v === null ? "nan" : v.toFixed(2);
          td.style.background = v === null ? "" : "rgba(40, 120, 200, " + Math.max(0, v).toFixed(2) + ")";
          td.style.color = v !== null && v > 0.6 ? "white" : "";
          td.dataset.text = pair.a + " layer " + pair.rows[i - 1] + " / " + pair.b + " layer " +
            pair.cols[j] + ": CKA " + (v === null ? "nan" : v.toFixed(3)) + " at " +
            view.querySelector(".similarity-name").textContent;
        });
      });
    });
  }
  view.querySelector(".pairs").addEventListener("mouseover", function (e) {
    if (e.target.dataset && e.target.dataset.text) readout.textContent = e.target.dataset.text;
  });
  slider.addEventListener("input", draw);
  draw();
}
