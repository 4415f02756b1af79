// cityos shelters page extras; the page is complete without them.
// 1. Map tiles under the offline SVG map when the site was built with a tile URL.
// 2. "Sort by distance" using the browser's location, only when the resident presses the button.
(function () {
  "use strict";
  var ja = document.documentElement.lang === "ja";

  function addTiles(map) {
    var url = map.getAttribute("data-tile-url");
    var z = map.getAttribute("data-zoom");
    var x0 = +map.getAttribute("data-x0"), y0 = +map.getAttribute("data-y0");
    var w = +map.getAttribute("data-w"), h = +map.getAttribute("data-h");
    var wrap = map.parentNode;
    var loaded = 0;
    for (var tx = Math.floor(x0 / 256); tx * 256 < x0 + w; tx++) {
      for (var ty = Math.floor(y0 / 256); ty * 256 < y0 + h; ty++) {
        var img = document.createElement("img");
        img.alt = "";
        img.style.left = ((tx * 256 - x0) / w) * 100 + "%";
        img.style.top = ((ty * 256 - y0) / h) * 100 + "%";
        img.style.width = (256 / w) * 100 + "%";
        img.style.height = (256 / h) * 100 + "%";
        img.onerror = function () { this.parentNode.removeChild(this); };
        img.onload = function () {
          loaded += 1;
          if (loaded === 1) {
            // tiles arrived: let them show through and credit their source
            map.querySelector(".map-bg").setAttribute("fill-opacity", "0.2");
            var credit = document.getElementById("tile-credit");
            if (credit) { credit.hidden = false; }
          }
        };
        img.src = url.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
        wrap.insertBefore(img, map);
      }
    }
  }

  function km(lat1, lon1, lat2, lon2) {
    var r = Math.PI / 180;
    var a = Math.sin((lat2 - lat1) * r / 2), b = Math.sin((lon2 - lon1) * r / 2);
    var h = a * a + Math.cos(lat1 * r) * Math.cos(lat2 * r) * b * b;
    return 12742 * Math.asin(Math.sqrt(h));
  }

  function sortByDistance(button) {
    var list = document.getElementById("shelter-list");
    var status = document.getElementById("distance-status");
    button.hidden = false;
    button.addEventListener("click", function () {
      status.textContent = ja ? "現在地を確認しています…" : "Finding your location…";
      navigator.geolocation.getCurrentPosition(function (pos) {
        var lat = pos.coords.latitude, lon = pos.coords.longitude;
        var items = Array.prototype.slice.call(list.querySelectorAll("li[data-lat]"));
        items.forEach(function (li) {
          var d = km(lat, lon, +li.getAttribute("data-lat"), +li.getAttribute("data-lon"));
          li.setAttribute("data-km", d);
          li.querySelector(".distance").textContent =
            (ja ? "約 " : "about ") + d.toFixed(1) + " km";
        });
        items.sort(function (p, q) { return p.getAttribute("data-km") - q.getAttribute("data-km"); });
        items.forEach(function (li) { list.appendChild(li); });
        status.textContent = ja ? "近い順に並べました。" : "Sorted by distance.";
      }, function () {
        status.textContent = ja ? "現在地がわかりませんでした。" : "Your location is not available.";
      }, { timeout: 15000, maximumAge: 300000 });
    });
  }

  var map = document.querySelector("svg.map[data-tile-url]");
  if (map) { addTiles(map); }
  var button = document.getElementById("sort-distance");
  if (button && navigator.geolocation) { sortByDistance(button); }
})();
