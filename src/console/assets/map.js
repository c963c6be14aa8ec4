// The offline map: country borders (Natural Earth, served by the console),
// the region's border crossings, and alert areas coloured by severity.
// No tiles, nothing fetched from outside. Leaflet is loaded as the global L.

import { api } from "./dom.js";

const SEVERITY = {
  extreme: "#b3001b",
  severe: "#e8590c",
  moderate: "#f2b705",
  minor: "#2f9e44",
  unknown: "#6c757d",
};

let map;
let areas;
let picking = null;
const shapes = new Map(); // alert id → Leaflet layer group

export async function init(container, onOpen) {
  map = L.map(container, {
    center: [39.5, 66.5],
    zoom: 5,
    minZoom: 3,
    maxZoom: 13,
    attributionControl: true,
    preferCanvas: false,
  });
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution("Natural Earth");
  const borders = await api("/assets/region.geojson");
  L.geoJSON(borders, {
    style: (f) => ({
      color: "#49505a",
      weight: f.properties.region ? 1.5 : 0.8,
      fillColor: f.properties.region ? "#f4efe1" : "#e3e6ea",
      fillOpacity: 1,
    }),
    onEachFeature: (f, layer) => layer.bindTooltip(f.properties.name, { sticky: true }),
  }).addTo(map);
  const gazetteer = await api("/api/gazetteer");
  for (const x of gazetteer.crossings) {
    L.circleMarker([x.latitude, x.longitude], {
      radius: 3,
      color: "#1c3d5a",
      weight: 1,
      fillColor: "#ffffff",
      fillOpacity: 1,
    })
      .bindTooltip(`${x.name} (${x.code})`)
      .addTo(map);
  }
  areas = L.layerGroup().addTo(map);
  map.on("click", (e) => {
    if (picking) {
      const done = picking;
      picking = null;
      container.classList.remove("picking");
      done(e.latlng.lat, e.latlng.lng);
    }
  });
  onOpenAlert = onOpen;
  return gazetteer;
}

let onOpenAlert = () => {};

/** Draws (or redraws) an alert's area. */
export function show(record) {
  const a = record.alert;
  if (!map || !a || !a.area) return;
  drop(a.id);
  const colour = SEVERITY[a.severity] || SEVERITY.unknown;
  const style = { color: colour, weight: 2, fillColor: colour, fillOpacity: 0.25 };
  const group = L.layerGroup();
  for (const c of a.area.circles || []) {
    if (!c.center) continue;
    const at = [c.center.latitude, c.center.longitude];
    const layer =
      c.radius_km > 0
        ? L.circle(at, { ...style, radius: c.radius_km * 1000 })
        : L.circleMarker(at, { ...style, radius: 6, fillOpacity: 0.8 });
    group.addLayer(layer);
  }
  for (const p of a.area.polygons || []) {
    group.addLayer(L.polygon(p.points.map((pt) => [pt.latitude, pt.longitude]), style));
  }
  group.eachLayer((layer) => {
    // The headline as a tooltip: Leaflet puts a string in as HTML, so it
    // gets a text node instead.
    layer.bindTooltip(document.createTextNode(a.headline));
    layer.on("click", () => onOpenAlert(a.id));
  });
  group.addTo(areas);
  shapes.set(a.id, group);
}

export function drop(id) {
  const old = shapes.get(id);
  if (old) {
    areas.removeLayer(old);
    shapes.delete(id);
  }
}

export function clear() {
  if (areas) areas.clearLayers();
  shapes.clear();
}

/** Zooms to an alert's area and makes it stand out. */
export function focus(id) {
  const group = shapes.get(id);
  if (!group) return false;
  for (const [other, g] of shapes) {
    g.eachLayer((l) => l.setStyle && l.setStyle({ weight: other === id ? 4 : 2 }));
  }
  const bounds = L.featureGroup(group.getLayers()).getBounds();
  if (bounds.isValid()) map.fitBounds(bounds.pad(0.5), { maxZoom: 10 });
  return true;
}

/** The next click on the map gives a point (compose). */
export function pick(container, done) {
  picking = done;
  container.classList.add("picking");
}

export function invalidate() {
  if (map) map.invalidateSize();
}
