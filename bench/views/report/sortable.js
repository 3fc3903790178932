/* Sorting and filtering for the report's tables (no library, no network).
   A table.sortable's header cells with data-col="N" sort its body rows by their N-th cell when clicked (again:
   the other way); numbers (a cell's data-sort, else its text: "1,234", "85.1 % ± 0.3", "0.92×") sort as numbers,
   the rest as text, empty cells last. Header cells with data-filter="NAME" also get a menu above the table that
   keeps the rows whose N-th cell is the chosen value. */
(function () {
  "use strict";
  function key(cell) {
    var text = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    var number = parseFloat(text.replace(/,/g, ""));
    return {text: text, number: isNaN(number) || !/^[-+.0-9]/.test(text) ? null : number};
  }
  function compare(a, b) {
    if (a.text === "" || a.text === "–") return b.text === "" || b.text === "–" ? 0 : 1;
    if (b.text === "" || b.text === "–") return -1;
    if (a.number !== null && b.number !== null) return a.number - b.number;
    return a.text.localeCompare(b.text, undefined, {numeric: true});
  }
  function sortBy(table, th) {
    var col = +th.dataset.col, body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[data-col]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return {row: row, key: key(row.cells[col]), i: i};
    });
    rows.sort(function (a, b) { return (ascending ? 1 : -1) * compare(a.key, b.key) || a.i - b.i; });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  function filterBar(table) {
    var heads = table.querySelectorAll("th[data-filter]");
    if (!heads.length) return;
    var bar = document.createElement("div"), count = document.createElement("span"), menus = [];
    bar.className = "filters";
    if (table.id) bar.dataset.for = table.id;
    function apply() {
      var shown = 0, rows = table.tBodies[0].rows;
      for (var r = 0; r < rows.length; r++) {
        var keep = menus.every(function (m) {
          return m.select.value === "" || rows[r].cells[m.col].textContent.trim() === m.select.value;
        });
        rows[r].hidden = !keep;
        shown += keep;
      }
      count.textContent = shown + " of " + rows.length + " rows";
    }
    heads.forEach(function (th) {
      var col = +th.dataset.col, values = {}, select = document.createElement("select");
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) { values[row.cells[col].textContent.trim()] = 1; });
      var all = document.createElement("option");
      all.value = ""; all.textContent = "every " + th.dataset.filter;
      select.appendChild(all);
      Object.keys(values).sort().forEach(function (v) {
        var option = document.createElement("option");
        option.value = v; option.textContent = v;
        select.appendChild(option);
      });
      select.setAttribute("aria-label", "filter by " + th.dataset.filter);
      select.dataset.filter = th.dataset.filter;
      select.addEventListener("change", apply);
      menus.push({col: col, select: select});
      bar.appendChild(select);
    });
    bar.appendChild(count);
    var box = table.closest(".scroll") || table;
    box.parentNode.insertBefore(bar, box);
    apply();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th[data-col]").forEach(function (th) {
      th.tabIndex = 0;
      th.title = "sort";
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, th); });
    });
    filterBar(table);
  });
})();
