// The zero-shot matrix (lmscope.report.html.matrix_view): switch between nats, bits and the
// out-of-vocabulary rate; hovering a cell highlights its row and column and reads it out.
document.querySelectorAll(".matrix").forEach(function (view) {
  var data = JSON.parse(view.querySelector("script").textContent);
  var readout = view.querySelector(".matrix-readout");
  var unit = "nats";
  var cells = view.querySelectorAll("td[data-r]");
  function text(v) { return unit === "oov" ? (100 * v).toFixed(2) + "%" : v.toFixed(4); }
  function paint() {
    var values = data[unit];
    cells.forEach(function (td) {
      var r = +td.dataset.r, c = +td.dataset.c, v = values[r][c];
      var column = values.map(function (row) { return row[c]; });
      var lo = Math.min.apply(null, column), hi = Math.max.apply(null, column);
      var t = hi === lo ? 0 : (v - lo) / (hi - lo);
      td.textContent = text(v);
      td.style.background = "hsl(" + (120 * (1 - t)).toFixed(0) + ", 60%, 82%)";
    });
  }
  view.querySelectorAll("input[type=radio]").forEach(function (radio) {
    radio.addEventListener("change", function () { unit = radio.value; paint(); });
  });
  cells.forEach(function (td) {
    td.addEventListener("mouseenter", function () {
      var r = +td.dataset.r, c = +td.dataset.c;
      cells.forEach(function (o) {
        o.classList.toggle("cross", +o.dataset.r === r || +o.dataset.c === c);
      });
      var column = data.nats.map(function (row) { return row[c]; });
      var best = column.indexOf(Math.min.apply(null, column));
      var gap = data.nats[r][c] - column[best];
      readout.textContent = data.runs[r] + " model (trained on " + data.trained_on[r] +
        ") on " + data.corpora[c] + ": " + data.nats[r][c].toFixed(4) + " nats/char = " +
        data.bits[r][c].toFixed(4) + " bits/char, " + (100 * data.oov[r][c]).toFixed(2) +
        "% of characters out of its vocabulary; " + (r === best ? "the lowest in its column" :
        "+" + gap.toFixed(4) + " nats above the lowest (" + data.runs[best] + ")");
    });
  });
  view.addEventListener("mouseleave", function () {
    cells.forEach(function (o) { o.classList.remove("cross"); });
  });
});
