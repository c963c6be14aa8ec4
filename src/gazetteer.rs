//! A small gazetteer of the region: border crossings (coordinates
//! approximate, WGS84, to about a kilometre), the border agency of each
//! country and the land borders between them. The simulated region of
//! `liaison demo` is built on it, and the officer's console shows the
//! crossings on its map.

/// One border crossing point.
#[derive(Debug, Clone, Copy)]
pub struct Crossing {
    /// Country of the post (ISO 3166-1 alpha-2).
    pub country: &'static str,
    /// The post's node name (`[a-z0-9-]`).
    pub node: &'static str,
    /// Human name of the crossing.
    pub name: &'static str,
    /// Crossing point code.
    pub code: &'static str,
    /// The neighbour across the border.
    pub neighbour: &'static str,
    pub latitude: f64,
    pub longitude: f64,
}

const fn c(
    country: &'static str,
    node: &'static str,
    name: &'static str,
    code: &'static str,
    neighbour: &'static str,
    latitude: f64,
    longitude: f64,
) -> Crossing {
    Crossing {
        country,
        node,
        name,
        code,
        neighbour,
        latitude,
        longitude,
    }
}

/// The border agency of each country of the region.
pub const AGENCIES: [(&str, &str); 6] = [
    ("KZ", "border-service"),
    ("KG", "border-service"),
    ("TJ", "border-guard"),
    ("TM", "border-service"),
    ("UZ", "border-troops"),
    ("AF", "border-police"),
];

/// The land borders between the six countries: where `demo --federated`
/// links two national brokers.
pub const NEIGHBOURS: [(&str, &str); 10] = [
    ("KZ", "KG"),
    ("KZ", "UZ"),
    ("KZ", "TM"),
    ("KG", "UZ"),
    ("KG", "TJ"),
    ("TJ", "UZ"),
    ("TJ", "AF"),
    ("TM", "UZ"),
    ("TM", "AF"),
    ("UZ", "AF"),
];

/// Whether two countries share a land border.
pub fn neighbours(a: &str, b: &str) -> bool {
    NEIGHBOURS
        .iter()
        .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
}

/// Crossings of the six countries, several per country.
pub const CROSSINGS: &[Crossing] = &[
    c("KZ", "korday", "Korday", "KZ-KOR", "KG", 43.040, 74.705),
    c(
        "KZ",
        "zhibek-zholy",
        "Zhibek Zholy",
        "KZ-ZHZ",
        "UZ",
        41.380,
        69.190,
    ),
    c("KZ", "kazygurt", "Kazygurt", "KZ-KAZ", "UZ", 41.760, 69.390),
    c(
        "KZ",
        "tamozhennyi",
        "Tamozhennyi",
        "KZ-TAM",
        "UZ",
        43.300,
        56.000,
    ),
    c("KG", "ak-zhol", "Ak-Zhol", "KG-AKZ", "KZ", 42.870, 74.250),
    c("KG", "dostuk", "Dostuk", "KG-DOS", "UZ", 40.790, 72.790),
    c(
        "KG",
        "kyzyl-bel",
        "Kyzyl-Bel",
        "KG-KZB",
        "TJ",
        39.950,
        69.680,
    ),
    c("KG", "karamyk", "Karamyk", "KG-KRM", "TJ", 39.480, 71.750),
    c(
        "TJ",
        "ishkashim",
        "Ishkashim bridge",
        "TJ-ISH",
        "AF",
        36.727,
        71.611,
    ),
    c(
        "TJ",
        "panji-poyon",
        "Panji Poyon",
        "TJ-PNP",
        "AF",
        37.230,
        68.630,
    ),
    c(
        "TJ",
        "tem",
        "Tem bridge (Khorog)",
        "TJ-TEM",
        "AF",
        37.500,
        71.530,
    ),
    c(
        "TJ",
        "fotehobod",
        "Fotehobod",
        "TJ-FOT",
        "UZ",
        40.170,
        69.370,
    ),
    c(
        "TM",
        "serhetabat",
        "Serhetabat",
        "TM-SER",
        "AF",
        35.280,
        62.340,
    ),
    c(
        "TM",
        "imam-nazar",
        "Imam Nazar",
        "TM-IMN",
        "AF",
        37.370,
        66.650,
    ),
    c("TM", "farap", "Farap", "TM-FAR", "UZ", 39.180, 63.610),
    c("TM", "dashoguz", "Dashoguz", "TM-DAS", "UZ", 41.800, 59.980),
    c(
        "UZ",
        "termez",
        "Termez Friendship Bridge",
        "UZ-TER",
        "AF",
        37.230,
        67.430,
    ),
    c("UZ", "oybek", "Oybek", "UZ-OYB", "TJ", 40.210, 69.460),
    c("UZ", "dostlik", "Dostlik", "UZ-DOS", "KG", 40.780, 72.780),
    c("UZ", "alat", "Alat", "UZ-ALA", "TM", 39.440, 63.800),
    c("AF", "hairatan", "Hairatan", "AF-HAI", "UZ", 37.220, 67.420),
    c(
        "AF",
        "sher-khan",
        "Sher Khan Bandar",
        "AF-SKB",
        "TJ",
        37.130,
        68.640,
    ),
    c(
        "AF",
        "torghundi",
        "Torghundi",
        "AF-TOR",
        "TM",
        35.260,
        62.270,
    ),
    c("AF", "aqina", "Aqina", "AF-AQI", "TM", 37.040, 65.990),
];

/// The crossings of one country.
pub fn of(country: &str) -> impl Iterator<Item = &'static Crossing> {
    CROSSINGS.iter().filter(move |c| c.country == country)
}
