/* Draws the journey numbers pages' charts: each element with a data-spec attribute holds
 * a Vega-Lite spec (built by the server, service/console/journey_stats.py), rendered by
 * the vendored vega-embed (static/vendor/). No eval: Vega's expressions are parsed to an
 * AST and run by vega-interpreter, so the console's policy needs no 'unsafe-eval'. No
 * action menu, no tooltip and no default style: those inject inline styles the policy
 * refuses. An element gets data-rendered="yes" once drawn, or "error" and a message. */
(function () {
  "use strict";
  var options = {
    renderer: "svg",
    actions: false,
    tooltip: false,
    defaultStyle: false,
    ast: true,
    expr: window.vega && window.vega.expressionInterpreter,
  };

  function fail(element, error) {
    element.setAttribute("data-rendered", "error");
    var note = document.createElement("p");
    note.className = "chart-error";
    note.textContent = "The chart could not be drawn: " + (error && error.message ? error.message : error);
    element.appendChild(note);
  }

  function draw(element) {
    var spec;
    try {
      spec = JSON.parse(element.getAttribute("data-spec"));
    } catch (error) {
      fail(element, error);
      return;
    }
    window
      .vegaEmbed(element, spec, options)
      .then(function () {
        element.setAttribute("data-rendered", "yes");
      })
      .catch(function (error) {
        fail(element, error);
      });
  }

  function start() {
    var charts = document.querySelectorAll("[data-spec]");
    if (!window.vegaEmbed || !options.expr) {
      charts.forEach(function (element) {
        fail(element, "the chart library did not load");
      });
      return;
    }
    charts.forEach(draw);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
