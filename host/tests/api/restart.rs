//! Restarts: data survives, precompiled components are reused.

use mercato::runtime::Origin;

use crate::both_backends;
use crate::helpers::*;

async fn restart_keeps_data_and_skips_compilation(backend: Backend) {
    let app = spawn_app_with_private_cache(backend).await;
    assert!(app.runtime.versions().iter().all(|v| v.origin == Origin::Compiled));
    let (_, token) = app.merchant("M").await;
    let product = app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), serde_json::json!({"sku": "MUG", "quantity": 2})).await;
    let digests: Vec<_> = app.runtime.versions().into_iter().map(|v| v.digest).collect();

    let (dir, pg, config) = app.stop().await;
    let app = start(config, dir, pg).await;
    let versions = app.runtime.versions();
    assert!(versions.iter().all(|v| v.origin == Origin::Cached), "{versions:?}");
    assert_eq!(versions.into_iter().map(|v| v.digest).collect::<Vec<_>>(), digests);
    let (status, again) = app.get(&format!("/v1/products/{}", s(&product["id"]))).await;
    assert_eq!((status, &again["title"]), (200, &product["title"]));
    let (_, cart) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(cart["total"]["amount"], 3998);
    // The merchant token still works after the restart.
    let (_, token_check) =
        send(
            app.request(reqwest::Method::POST, "/v1/merchant/products")
                .bearer_auth(&token)
                .json(&product_body("Pen", &["PEN"], 1, "EUR")),
        )
        .await;
    assert_eq!(token_check["title"], "Pen");
}
both_backends!(restart, restart_keeps_data_and_skips_compilation);
