//! Service interfaces imported by components (cart → catalog; catalog →
//! inventory; order → cart, inventory, payment), served by calling the
//! currently active version of the component that exports them. The first
//! call in a request instantiates it
//! in its own store (own namespace, own memory cap, the same deadline); later
//! calls in the same request reuse that instance. A fault in the callee
//! (trap, deadline) is returned as a trap to the caller: it is not an answer.

use crate::bindings::cart::CartComponent;
use crate::bindings::catalog::CatalogComponent;
use crate::bindings::host::mercato::commerce::{cart, catalog, inventory, payment};
use crate::bindings::inventory::InventoryComponent;
use crate::bindings::payment::PaymentComponent;
use crate::bindings::types::{
    Cart, Error, Money, Payment, PaymentRequest, Product, ProductInput, ProductPage, ReservationLine,
    SkuInfo, StockLevel,
};
use crate::runtime::{Ctx, Fault, Instance};

type Answer<T> = wasmtime::Result<Result<T, Error>>;

fn trap(f: Fault) -> wasmtime::Error {
    wasmtime::Error::new(f)
}

/// The instance in `slot`, made by `make` on first use.
async fn peer<B>(
    slot: &mut Option<Instance<B>>,
    make: impl Future<Output = Result<Instance<B>, Fault>>,
) -> wasmtime::Result<&mut Instance<B>> {
    if slot.is_none() {
        *slot = Some(make.await.map_err(trap)?);
    }
    slot.as_mut().ok_or_else(|| wasmtime::format_err!("peer instance missing"))
}

impl Ctx {
    async fn catalog_peer(&mut self) -> wasmtime::Result<&mut Instance<CatalogComponent>> {
        let (rt, set, deadline, staged) =
            (self.rt.clone(), self.set.clone(), self.deadline, self.staged.clone());
        peer(&mut self.peers.catalog, async move { rt.instantiate_catalog(&set, deadline, staged).await })
            .await
    }

    async fn inventory_peer(&mut self) -> wasmtime::Result<&mut Instance<InventoryComponent>> {
        let (rt, set, deadline, staged) =
            (self.rt.clone(), self.set.clone(), self.deadline, self.staged.clone());
        peer(&mut self.peers.inventory, async move { rt.instantiate_inventory(&set, deadline, staged).await })
            .await
    }

    async fn cart_peer(&mut self) -> wasmtime::Result<&mut Instance<CartComponent>> {
        let (rt, set, deadline, staged) =
            (self.rt.clone(), self.set.clone(), self.deadline, self.staged.clone());
        peer(&mut self.peers.cart, async move { rt.instantiate_cart(&set, deadline, staged).await }).await
    }

    async fn payment_peer(&mut self) -> wasmtime::Result<&mut Instance<PaymentComponent>> {
        let (rt, set, deadline, staged) =
            (self.rt.clone(), self.set.clone(), self.deadline, self.staged.clone());
        peer(&mut self.peers.payment, async move { rt.instantiate_payment(&set, deadline, staged).await })
            .await
    }
}

/// Call `$method` of the peer's exported interface, raced against the
/// request deadline in host time, and time it. At the deadline the caller
/// gets a `timeout` error (it can compensate) and the peer instance, cut off
/// mid-call, is thrown away.
macro_rules! peer_call {
    ($self:ident, $peer:ident, $slot:ident, $iface:ident, $component:literal, $method:ident ( $($arg:expr),* )) => {{
        let deadline = $self.deadline;
        let peer = $self.$peer().await?;
        let started = std::time::Instant::now();
        let call = peer.bindings.$iface().$method(&mut peer.store, $($arg),*);
        let result = crate::capabilities::bounded(deadline, call).await;
        crate::telemetry::component_call($component, stringify!($method), started);
        let call_name = concat!($component, ".", stringify!($method));
        if $self.trap_here(call_name) {
            return Err(crate::capabilities::transactions::injected(call_name));
        }
        match result {
            Some(result) => result.map_err(|e| trap(Fault::classify($component, &e))),
            None => {
                $self.peers.$slot = None;
                crate::telemetry::host_call_timed_out($component, stringify!($method));
                Ok(Err(Error::Timeout(format!("{} did not answer before the deadline", $component))))
            }
        }
    }};
}

impl catalog::Host for Ctx {
    async fn list_products(
        &mut self,
        limit: u32,
        cursor: Option<String>,
        merchant: Option<String>,
    ) -> Answer<ProductPage> {
        peer_call!(
            self,
            catalog_peer,
            catalog,
            mercato_commerce_catalog,
            "catalog",
            call_list_products(limit, cursor.as_deref(), merchant.as_ref())
        )
    }

    async fn get_product(&mut self, id: String) -> Answer<Product> {
        peer_call!(self, catalog_peer, catalog, mercato_commerce_catalog, "catalog", call_get_product(&id))
    }

    async fn lookup_skus(&mut self, skus: Vec<String>) -> Answer<Vec<Option<SkuInfo>>> {
        peer_call!(self, catalog_peer, catalog, mercato_commerce_catalog, "catalog", call_lookup_skus(&skus))
    }

    async fn create_product(&mut self, merchant: String, input: ProductInput) -> Answer<Product> {
        peer_call!(
            self,
            catalog_peer,
            catalog,
            mercato_commerce_catalog,
            "catalog",
            call_create_product(&merchant, &input)
        )
    }

    async fn update_product(&mut self, merchant: String, id: String, input: ProductInput) -> Answer<Product> {
        peer_call!(
            self,
            catalog_peer,
            catalog,
            mercato_commerce_catalog,
            "catalog",
            call_update_product(&merchant, &id, &input)
        )
    }
}

impl inventory::Host for Ctx {
    async fn levels(&mut self, skus: Vec<String>) -> Answer<Vec<StockLevel>> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_levels(&skus)
        )
    }

    async fn stock_of(&mut self, merchant: String, sku: String) -> Answer<StockLevel> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_stock_of(&merchant, &sku)
        )
    }

    async fn register_sku(&mut self, merchant: String, sku: String, on_hand: u32) -> Answer<StockLevel> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_register_sku(&merchant, &sku, on_hand)
        )
    }

    async fn set_on_hand(&mut self, merchant: String, sku: String, on_hand: u32) -> Answer<StockLevel> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_set_on_hand(&merchant, &sku, on_hand)
        )
    }

    async fn reserve(&mut self, id: String, lines: Vec<ReservationLine>) -> Answer<String> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_reserve(&id, &lines)
        )
    }

    async fn commit(&mut self, id: String) -> Answer<String> {
        peer_call!(self, inventory_peer, inventory, mercato_commerce_inventory, "inventory", call_commit(&id))
    }

    async fn release(&mut self, id: String) -> Answer<String> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_release(&id)
        )
    }

    async fn restock(&mut self, lines: Vec<ReservationLine>) -> Answer<()> {
        peer_call!(
            self,
            inventory_peer,
            inventory,
            mercato_commerce_inventory,
            "inventory",
            call_restock(&lines)
        )
    }
}

impl cart::Host for Ctx {
    async fn create_cart(&mut self, currency: String) -> Answer<Cart> {
        peer_call!(self, cart_peer, cart, mercato_commerce_cart, "cart", call_create_cart(&currency))
    }

    async fn get_cart(&mut self, id: String) -> Answer<Cart> {
        peer_call!(self, cart_peer, cart, mercato_commerce_cart, "cart", call_get_cart(&id))
    }

    async fn add_item(&mut self, id: String, sku: String, quantity: u32) -> Answer<Cart> {
        peer_call!(self, cart_peer, cart, mercato_commerce_cart, "cart", call_add_item(&id, &sku, quantity))
    }

    async fn set_quantity(&mut self, id: String, sku: String, quantity: u32) -> Answer<Cart> {
        peer_call!(
            self,
            cart_peer,
            cart,
            mercato_commerce_cart,
            "cart",
            call_set_quantity(&id, &sku, quantity)
        )
    }

    async fn remove_item(&mut self, id: String, sku: String) -> Answer<Cart> {
        peer_call!(self, cart_peer, cart, mercato_commerce_cart, "cart", call_remove_item(&id, &sku))
    }
}

impl payment::Host for Ctx {
    async fn authorize(&mut self, request: PaymentRequest) -> Answer<Payment> {
        peer_call!(self, payment_peer, payment, mercato_commerce_payment, "payment", call_authorize(&request))
    }

    async fn capture(&mut self, payment_id: String, idempotency_key: String) -> Answer<Payment> {
        peer_call!(
            self,
            payment_peer,
            payment,
            mercato_commerce_payment,
            "payment",
            call_capture(&payment_id, &idempotency_key)
        )
    }

    async fn void(&mut self, request: PaymentRequest) -> Answer<Payment> {
        peer_call!(self, payment_peer, payment, mercato_commerce_payment, "payment", call_void(&request))
    }

    async fn refund(
        &mut self,
        payment_id: String,
        amount: Money,
        idempotency_key: String,
    ) -> Answer<Payment> {
        peer_call!(
            self,
            payment_peer,
            payment,
            mercato_commerce_payment,
            "payment",
            call_refund(&payment_id, &amount, &idempotency_key)
        )
    }
}
