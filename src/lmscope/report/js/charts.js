// Draws every chart of the page (a .chart element holding its data; lmscope.report.charts) with uPlot.
(function () {
  function fmt(v) {
    if (v == null) { return "\u2013"; }
    return Number.isInteger(v) || Math.abs(v) >= 1000 ? String(v) : v.toPrecision(4);
  }
  function value(u, v) { return fmt(v); }
  function draw(box) {
    var spec = JSON.parse(box.querySelector("script").textContent);
    var series = [{label: spec.xlabel, value: value}];
    spec.series.forEach(function (s) {
      series.push({label: s.label, stroke: s.color, width: s.width, spanGaps: true,
                   dash: s.dash ? [6, 4] : undefined, value: value,
                   points: {show: s.markers, size: 5, fill: s.color}});
    });
    var data = [spec.x].concat(spec.series.map(function (s) { return s.y; }));
    var plot = new uPlot({
      width: box.clientWidth, height: spec.height, series: series,
      scales: {x: {time: false}, y: {distr: spec.logy ? 3 : 1}},
      axes: [{label: spec.xlabel}, {label: spec.ylabel}],
      cursor: {drag: {x: true, y: false}}, legend: {live: true}
    }, data, box);
    var width = box.clientWidth;
    window.addEventListener("resize", function () {
      if (box.clientWidth !== width) {
        width = box.clientWidth;
        plot.setSize({width: width, height: spec.height});
      }
    });
  }
  document.querySelectorAll(".chart").forEach(function (box) {
    try { draw(box); } catch (e) { box.textContent = "cannot draw this chart: " + e; }
  });
})();
