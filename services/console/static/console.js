// Draws every canvas that names its data: <canvas data-chart="ID"> reads the
// JSON in <script type="application/json" id="ID">.
for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
  const data = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
  new Chart(canvas, {
    type: "bar",
    data: { labels: data.labels, datasets: data.datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
    },
  });
}
