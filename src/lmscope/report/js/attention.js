// The attention view (lmscope.report.html.attention_view): for the hovered query token, colour
// every key token of each head's row by its attention weight (opacity = sqrt(weight), so that
// weak links stay visible).
document.querySelectorAll(".attn").forEach(function (view) {
  try { show(view); } catch (e) {  // one broken view (e.g. NaN weights) leaves the others working
    view.querySelector(".attn-heads").textContent = "cannot show this view: " + e;
  }
});
function show(view) {
  var data = JSON.parse(document.getElementById(view.dataset.maps).textContent);
  var T = data.tokens.length, query = T - 1;
  var slider = view.querySelector(".attn-checkpoint"), layer = view.querySelector(".attn-layer");
  var promptRow = view.querySelector(".query-row"), heads = view.querySelector(".attn-heads");
  var quiet = {" ": "\u00b7", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u21e4"};
  function token(text, k) {
    var s = document.createElement("span");
    s.textContent = text.replace(/[ \n\t\r]/g, function (c) { return quiet[c]; });
    if (quiet[text]) { s.classList.add("ws"); }
    s.dataset.k = k;
    return s;
  }
  data.tokens.forEach(function (text, q) {
    var s = token(text, q);
    s.addEventListener("mouseenter", function () { query = q; draw(); });
    promptRow.appendChild(s);
  });
  function draw() {
    var ckpt = data.checkpoints[+slider.value], maps = ckpt.layers[+layer.value];
    view.querySelector(".attn-checkpoint-name").textContent =
      ckpt.checkpoint + " (iteration " + ckpt.iteration + ")";
    view.querySelector(".attn-query").textContent =
      "query " + query + ": " + JSON.stringify(data.tokens[query]);
    promptRow.querySelectorAll("span").forEach(function (s) {
      s.classList.toggle("current", +s.dataset.k === query);
    });
    heads.textContent = "";
    maps.forEach(function (rows, h) {
      var weights = rows[query], top = Math.max.apply(null, weights), best = weights.indexOf(top);
      var line = document.createElement("div"), label = document.createElement("b");
      var tokens = document.createElement("span"), note = document.createElement("i");
      line.className = "head";
      label.textContent = "head " + h;
      tokens.className = "tokens";
      data.tokens.forEach(function (text, k) {
        var s = token(text, k);
        if (k > query) { s.classList.add("future"); }
        else {
          s.style.background = "rgba(40, 100, 200, " + Math.sqrt(weights[k]).toFixed(3) + ")";
          s.title = "key " + k + ": " + weights[k].toFixed(3);
        }
        tokens.appendChild(s);
      });
      note.textContent = "most on " + JSON.stringify(data.tokens[best]) + " at " + best +
        " (" + top.toFixed(2) + ")";
      line.append(label, tokens, note);
      heads.appendChild(line);
    });
  }
  slider.addEventListener("input", draw);
  layer.addEventListener("change", draw);
  draw();
}
