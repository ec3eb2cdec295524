// Draws every canvas that names its data: <canvas data-chart="ID"> reads the
// JSON in <script type="application/json" id="ID">.
// Money axes: up to micro-units, in plain digits (Chart.js would show 5E-5).
const moneyTick = (value) => Number(value).toLocaleString("en", { maximumFractionDigits: 6 });
for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
  const data = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
  const y = { stacked: true, beginAtZero: true };
  if (data.money) y.ticks = { callback: moneyTick };
  new Chart(canvas, {
    type: "bar",
    data: { labels: data.labels, datasets: data.datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { x: { stacked: true }, y },
    },
  });
}
