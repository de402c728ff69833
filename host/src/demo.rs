//! The demo catalog seeded into an empty database: three merchants and 24
//! products with variants and stock, priced in EUR. It goes through the
//! catalog component like any merchant's products would.

use crate::bindings::types::{Money, ProductInput, VariantInput};
use crate::runtime::Runtime;
use crate::storage::Db;

/// The settings key that marks the demo as seeded (so two replicas starting
/// on one empty database seed it once).
const SEEDED_KEY: &str = "demo_seeded_by";

struct DemoProduct {
    title: &'static str,
    description: &'static str,
    /// (sku suffix, variant title, price in cents, stock)
    variants: &'static [(&'static str, &'static str, i64, u32)],
}

const fn p(
    title: &'static str,
    description: &'static str,
    variants: &'static [(&'static str, &'static str, i64, u32)],
) -> DemoProduct {
    DemoProduct { title, description, variants }
}

const MERCHANTS: &[(&str, &str, &[DemoProduct])] = &[
    (
        "Atelier Nord",
        "NORD",
        &[
            p(
                "Stoneware mug",
                "Hand-thrown, 350 ml.",
                &[("MUG-SND", "Sand", 1800, 40), ("MUG-SLT", "Slate", 1800, 25)],
            ),
            p(
                "Linen tea towel",
                "Stonewashed linen, 50×70 cm.",
                &[("TOWEL-NAT", "Natural", 1200, 60), ("TOWEL-RST", "Rust", 1200, 30)],
            ),
            p(
                "Oak serving board",
                "Oiled oak.",
                &[("BOARD-S", "Small", 3500, 15), ("BOARD-L", "Large", 5500, 8)],
            ),
            p(
                "Wool throw",
                "Merino, 130×180 cm.",
                &[("THROW-GRY", "Grey", 8900, 10), ("THROW-OCH", "Ochre", 8900, 6)],
            ),
            p("Beeswax candles", "Set of two, 25 cm.", &[("CANDLE-2", "Pair", 1450, 50)]),
            p(
                "Ceramic vase",
                "Matte glaze.",
                &[("VASE-S", "Small", 2900, 12), ("VASE-M", "Medium", 4200, 9), ("VASE-L", "Large", 5900, 4)],
            ),
            p(
                "Cotton cushion cover",
                "45×45 cm.",
                &[("CUSH-IND", "Indigo", 2400, 20), ("CUSH-SAG", "Sage", 2400, 18)],
            ),
            p(
                "Brass hook",
                "Solid brass.",
                &[("HOOK-1", "Single", 900, 100), ("HOOK-3", "Set of three", 2400, 30)],
            ),
        ],
    ),
    (
        "Rösterei Süd",
        "SUED",
        &[
            p(
                "House espresso",
                "Chocolate, hazelnut.",
                &[("ESP-250", "250 g", 950, 80), ("ESP-1000", "1 kg", 3200, 20)],
            ),
            p(
                "Ethiopia Guji",
                "Bergamot, peach.",
                &[("GUJI-250", "250 g", 1350, 40), ("GUJI-1000", "1 kg", 4600, 10)],
            ),
            p(
                "Colombia Huila",
                "Caramel, red apple.",
                &[("HUILA-250", "250 g", 1150, 45), ("HUILA-1000", "1 kg", 3900, 12)],
            ),
            p("Decaf Brazil", "Swiss water process.", &[("DECAF-250", "250 g", 1050, 30)]),
            p(
                "Pour-over dripper",
                "Porcelain, size 02.",
                &[("DRIP-WHT", "White", 2600, 15), ("DRIP-BLK", "Black", 2600, 15)],
            ),
            p("Paper filters", "100 pieces.", &[("FILT-100", "Size 02", 650, 200)]),
            p("Hand grinder", "Steel burrs.", &[("GRIND-1", "Standard", 7900, 7)]),
            p("Tasting flight", "Four 100 g bags.", &[("FLIGHT-4", "Four origins", 2900, 25)]),
        ],
    ),
    (
        "Velo Werk",
        "VELO",
        &[
            p("Bar tape", "Cork, 2.5 mm.", &[("TAPE-BLK", "Black", 1900, 35), ("TAPE-TAN", "Tan", 1900, 20)]),
            p(
                "Bottle cage",
                "Aluminium, 38 g.",
                &[("CAGE-SLV", "Silver", 1500, 40), ("CAGE-BLK", "Black", 1500, 40)],
            ),
            p("Rear light", "USB-C, 50 lm.", &[("LIGHT-R", "Rear", 2900, 25)]),
            p("Mini pump", "Presta and Schrader.", &[("PUMP-MINI", "Mini", 2400, 30)]),
            p(
                "Chain",
                "11-speed, 116 links.",
                &[("CHAIN-11", "11-speed", 3400, 18), ("CHAIN-12", "12-speed", 4200, 12)],
            ),
            p("Inner tube", "700×25–32c.", &[("TUBE-700", "700c", 700, 120), ("TUBE-650", "650b", 750, 60)]),
            p("Multi-tool", "14 functions.", &[("TOOL-14", "14 in 1", 2800, 22)]),
            p("Cycling cap", "Cotton.", &[("CAP-S", "S/M", 2200, 15), ("CAP-L", "L/XL", 2200, 15)]),
        ],
    ),
];

/// Seed the demo catalog if the database has no merchants and no other
/// process seeded it. Returns `(merchant name, token)` pairs to show once.
pub async fn seed_if_empty(runtime: &Runtime, db: &Db) -> anyhow::Result<Vec<(String, String)>> {
    if db.merchant_count().await? > 0 {
        return Ok(Vec::new());
    }
    let me = crate::auth::new_secret();
    if db.setting_insert_or_get(SEEDED_KEY, &me).await? != me {
        return Ok(Vec::new());
    }
    let mut tokens = Vec::new();
    let mut count = 0;
    for (name, prefix, products) in MERCHANTS {
        let (token, row) = crate::auth::new_merchant(name);
        db.insert_merchant(&row, crate::now_ms()).await?;
        for product in *products {
            let input = ProductInput {
                title: product.title.to_string(),
                description: product.description.to_string(),
                variants: product
                    .variants
                    .iter()
                    .map(|(sku, title, cents, stock)| VariantInput {
                        sku: format!("{prefix}-{sku}"),
                        title: title.to_string(),
                        price: Money { amount: *cents, currency: "EUR".to_string() },
                        stock: Some(*stock),
                    })
                    .collect(),
            };
            let created = match runtime.instance::<crate::bindings::catalog::Service>().await {
                Ok(mut catalog) => {
                    catalog
                        .call("create-product", |c, s| {
                            c.mercato_commerce_merchant_catalog().call_create_product(s, &row.id, &input)
                        })
                        .await
                }
                Err(fault) => Err(fault),
            };
            match created {
                Ok(Ok(_)) => count += 1,
                Ok(Err(e)) => anyhow::bail!("demo product {:?}: {e:?}", product.title),
                Err(fault) => anyhow::bail!("demo product {:?}: {fault}", product.title),
            }
        }
        tokens.push((name.to_string(), token));
    }
    tracing::info!(merchants = MERCHANTS.len(), products = count, "demo catalog seeded");
    Ok(tokens)
}
