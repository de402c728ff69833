//! Service interfaces imported by components (cart → `sku-lookup`; catalog →
//! `stock-levels`, `stock-registry`; order → `cart-contents`, `stock-levels`,
//! `reservations`, `payment`), served by calling the version of the component
//! that exports them in the request's scope. The
//! first call in a request instantiates it in its own store (own namespace,
//! own memory cap, the same deadline); later calls in the same request reuse
//! that instance. A fault in the callee (trap, deadline) is returned as a trap
//! to the caller: it is not an answer.

use super::{Ctx, Fault, Instance, Service};
use crate::bindings::host::mercato::commerce::{
    cart_contents, payment, reservations, sku_lookup, stock_levels, stock_registry,
};
use crate::bindings::types::{
    Cart, Error, Money, Payment, PaymentRequest, ReservationLine, SkuInfo, StockLevel,
};
use crate::bindings::{
    cart as cart_world, catalog as catalog_world, inventory as inventory_world, payment as payment_world,
};

type Answer<T> = wasmtime::Result<Result<T, Error>>;

fn trap(f: Fault) -> wasmtime::Error {
    wasmtime::Error::new(f)
}

impl Ctx {
    /// This request's instance of `S`: the one an earlier call left, or a
    /// fresh one in the request's scope. Hand it back with [`Ctx::settle`].
    async fn lend<S: Service>(&mut self) -> wasmtime::Result<Instance<S::Bindings>> {
        if let Some(Ok(peer)) =
            self.peers.slots[S::KIND as usize].take().map(|p| p.downcast::<Instance<S::Bindings>>())
        {
            return Ok(*peer);
        }
        let Some(runtime) = self.peers.runtime.clone() else {
            let component = self.kind.name();
            return Err(trap(Fault::Trap {
                component,
                detail: "calls into other components are not granted".into(),
            }));
        };
        runtime.instantiate::<S>(&self.scope, self.staged.clone()).await.map_err(trap)
    }

    /// The caller's answer from a call on a lent instance, whose outcome is
    /// `None` if the request's deadline cut it off (see [`Instance::call_until`]).
    /// After an answer the instance is kept for the request's next call; at
    /// the deadline the caller gets a `timeout` error (it can compensate) and
    /// the instance, cut off mid-call, is thrown away; after a fault, which
    /// reaches the caller as a trap, too.
    fn settle<S: Service, T>(
        &mut self,
        peer: Instance<S::Bindings>,
        function: &'static str,
        outcome: Option<Result<Result<T, Error>, Fault>>,
    ) -> Answer<T> {
        let component = S::KIND.name();
        if self.tx.traps.here(self.kind.name(), &self.staged, component, function) {
            return Err(crate::capabilities::injected(&format!("{component}.{function}")));
        }
        match outcome {
            Some(Ok(answer)) => {
                self.peers.slots[S::KIND as usize] = Some(Box::new(peer));
                Ok(answer)
            }
            Some(Err(fault)) => Err(trap(fault)),
            None => {
                crate::telemetry::host_call_timed_out(component, function);
                Ok(Err(Error::Timeout(format!("{component} did not answer before the deadline"))))
            }
        }
    }
}

impl sku_lookup::Host for Ctx {
    async fn lookup_skus(&mut self, skus: Vec<String>) -> Answer<Vec<Option<SkuInfo>>> {
        let mut peer = self.lend::<catalog_world::Service>().await?;
        let outcome = peer
            .call_until("lookup-skus", |c, s| c.mercato_commerce_sku_lookup().call_lookup_skus(s, &skus))
            .await;
        self.settle::<catalog_world::Service, _>(peer, "lookup-skus", outcome)
    }
}

impl stock_levels::Host for Ctx {
    async fn levels(&mut self, skus: Vec<String>) -> Answer<Vec<StockLevel>> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome =
            peer.call_until("levels", |c, s| c.mercato_commerce_stock_levels().call_levels(s, &skus)).await;
        self.settle::<inventory_world::Service, _>(peer, "levels", outcome)
    }

    async fn available(&mut self, skus: Vec<String>) -> Answer<Vec<u32>> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome = peer
            .call_until("available", |c, s| c.mercato_commerce_stock_levels().call_available(s, &skus))
            .await;
        self.settle::<inventory_world::Service, _>(peer, "available", outcome)
    }
}

impl stock_registry::Host for Ctx {
    async fn register_sku(&mut self, merchant: String, sku: String, on_hand: u32) -> Answer<StockLevel> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome = peer
            .call_until("register-sku", |c, s| {
                c.mercato_commerce_stock_registry().call_register_sku(s, &merchant, &sku, on_hand)
            })
            .await;
        self.settle::<inventory_world::Service, _>(peer, "register-sku", outcome)
    }
}

impl reservations::Host for Ctx {
    async fn reserve(&mut self, id: String, lines: Vec<ReservationLine>) -> Answer<String> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome = peer
            .call_until("reserve", |c, s| c.mercato_commerce_reservations().call_reserve(s, &id, &lines))
            .await;
        self.settle::<inventory_world::Service, _>(peer, "reserve", outcome)
    }

    async fn commit(&mut self, id: String) -> Answer<String> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome =
            peer.call_until("commit", |c, s| c.mercato_commerce_reservations().call_commit(s, &id)).await;
        self.settle::<inventory_world::Service, _>(peer, "commit", outcome)
    }

    async fn release(&mut self, id: String) -> Answer<String> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome =
            peer.call_until("release", |c, s| c.mercato_commerce_reservations().call_release(s, &id)).await;
        self.settle::<inventory_world::Service, _>(peer, "release", outcome)
    }

    async fn restock(&mut self, lines: Vec<ReservationLine>) -> Answer<String> {
        let mut peer = self.lend::<inventory_world::Service>().await?;
        let outcome = peer
            .call_until("restock", |c, s| c.mercato_commerce_reservations().call_restock(s, &lines))
            .await;
        self.settle::<inventory_world::Service, _>(peer, "restock", outcome)
    }
}

impl cart_contents::Host for Ctx {
    async fn get_cart(&mut self, id: String) -> Answer<Cart> {
        let mut peer = self.lend::<cart_world::Service>().await?;
        let outcome = peer
            .call_until("get-cart", |c, s| c.mercato_commerce_cart_contents().call_get_cart(s, &id))
            .await;
        self.settle::<cart_world::Service, _>(peer, "get-cart", outcome)
    }
}

impl payment::Host for Ctx {
    async fn authorize(&mut self, request: PaymentRequest) -> Answer<Payment> {
        let mut peer = self.lend::<payment_world::Service>().await?;
        let outcome = peer
            .call_until("authorize", |c, s| c.mercato_commerce_payment().call_authorize(s, &request))
            .await;
        self.settle::<payment_world::Service, _>(peer, "authorize", outcome)
    }

    async fn capture(&mut self, payment_id: String, idempotency_key: String) -> Answer<Payment> {
        let mut peer = self.lend::<payment_world::Service>().await?;
        let outcome = peer
            .call_until("capture", |c, s| {
                c.mercato_commerce_payment().call_capture(s, &payment_id, &idempotency_key)
            })
            .await;
        self.settle::<payment_world::Service, _>(peer, "capture", outcome)
    }

    async fn void(&mut self, request: PaymentRequest) -> Answer<Payment> {
        let mut peer = self.lend::<payment_world::Service>().await?;
        let outcome =
            peer.call_until("void", |c, s| c.mercato_commerce_payment().call_void(s, &request)).await;
        self.settle::<payment_world::Service, _>(peer, "void", outcome)
    }

    async fn refund(
        &mut self,
        payment_id: String,
        amount: Money,
        idempotency_key: String,
    ) -> Answer<Payment> {
        let mut peer = self.lend::<payment_world::Service>().await?;
        let outcome = peer
            .call_until("refund", |c, s| {
                c.mercato_commerce_payment().call_refund(s, &payment_id, &amount, &idempotency_key)
            })
            .await;
        self.settle::<payment_world::Service, _>(peer, "refund", outcome)
    }
}
