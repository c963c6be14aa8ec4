#!/usr/bin/env python3
"""Makes the console's offline basemap (src/console/assets/region.geojson).

Input: countries-50m.json of the npm package world-atlas 2.0.0 (Natural
Earth 4.1.0 Admin 0 boundaries, 1:50m, public domain, as TopoJSON; ISC
licence for the packaging). Output: GeoJSON of the region's six countries
and their neighbours, coordinates rounded to 0.01 degree (about a
kilometre, what the map shows).

    npm pack world-atlas@2.0.0 && tar xzf world-atlas-2.0.0.tgz
    python3 tools/basemap.py package/countries-50m.json > src/console/assets/region.geojson
"""
import json
import sys

REGION = {"Kazakhstan": "KZ", "Kyrgyzstan": "KG", "Tajikistan": "TJ",
          "Turkmenistan": "TM", "Uzbekistan": "UZ", "Afghanistan": "AF"}
NEIGHBOURS = {"China": "CN", "Russia": "RU", "Iran": "IR", "Pakistan": "PK",
              "India": "IN", "Mongolia": "MN", "Azerbaijan": "AZ"}


def arcs_of(topo):
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append([round(x * sx + tx, 2), round(y * sy + ty, 2)])
        out.append(points)
    return out


def ring(arcs, indices):
    points = []
    for i in indices:
        arc = arcs[i] if i >= 0 else list(reversed(arcs[~i]))
        points.extend(arc if not points else arc[1:])
    # Rounding may repeat points; keep each once in a row.
    dedup = [p for k, p in enumerate(points) if k == 0 or p != points[k - 1]]
    return dedup


def main():
    topo = json.load(open(sys.argv[1]))
    arcs = arcs_of(topo)
    features = []
    for g in topo["objects"]["countries"]["geometries"]:
        name = g.get("properties", {}).get("name")
        code = REGION.get(name) or NEIGHBOURS.get(name)
        if not code:
            continue
        if g["type"] == "Polygon":
            polygons = [g["arcs"]]
        elif g["type"] == "MultiPolygon":
            polygons = g["arcs"]
        else:
            continue
        coordinates = [[ring(arcs, r) for r in p] for p in polygons]
        coordinates = [p for p in coordinates if len(p[0]) >= 4]
        features.append({
            "type": "Feature",
            "properties": {"code": code, "name": name, "region": code in REGION.values()},
            "geometry": {"type": "MultiPolygon", "coordinates": coordinates},
        })
    json.dump({"type": "FeatureCollection", "features": features}, sys.stdout, separators=(",", ":"))


main()
