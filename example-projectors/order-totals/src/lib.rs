//! Per-customer order count and total from `OrderPlaced` / `OrderCancelled`.
//!
//! Events (JSON data):
//! - `OrderPlaced { "order_id": "o-1", "customer": "c-1", "total_cents": 1250 }`
//! - `OrderCancelled { "order_id": "o-1" }`
//!
//! View keys:
//! - `customer/<id>` → `{ "orders": n, "total_cents": n, "cancelled": n }`: live (not cancelled)
//!   orders and their total, and how many of the customer's orders were cancelled.
//! - `order/<id>` → `{ "customer": "...", "total_cents": n, "cancelled": bool }`
//! - `stats` → `{ "ignored": n }`: events that could not apply (an order placed twice,
//!   cancelled twice, or cancelled without being placed). They never change a customer's totals.

use prism_guest::{Error, Event, Projector, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer: String,
    total_cents: i64,
}

#[derive(Deserialize)]
struct OrderCancelled {
    order_id: String,
}

#[derive(Serialize, Deserialize)]
struct Order {
    customer: String,
    total_cents: i64,
    cancelled: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Customer {
    orders: u64,
    total_cents: i64,
    cancelled: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    ignored: u64,
}

struct OrderTotals;

impl Projector for OrderTotals {
    const NAME: &'static str = "order-totals";
    const SCHEMA_VERSION: u32 = 1;

    fn subscription() -> Subscription {
        Subscription::event_types(["OrderPlaced", "OrderCancelled"])
    }

    fn apply(event: &Event<'_>, view: &mut View) -> Result<(), Error> {
        match event.event_type {
            "OrderPlaced" => placed(event.data()?, view),
            "OrderCancelled" => cancelled(event.data()?, view),
            _ => Ok(()),
        }
    }
}

fn placed(placed: OrderPlaced, view: &mut View) -> Result<(), Error> {
    let order_key = ("order/", &placed.order_id);
    if view.get::<Order>(order_key)?.is_some() {
        return ignore(view);
    }
    view.update(("customer/", &placed.customer), |c: &mut Customer| {
        c.orders += 1;
        c.total_cents += placed.total_cents;
    })?;
    view.put(
        ("order/", &placed.order_id),
        &Order {
            customer: placed.customer,
            total_cents: placed.total_cents,
            cancelled: false,
        },
    )
}

fn cancelled(cancelled: OrderCancelled, view: &mut View) -> Result<(), Error> {
    let order_key = ("order/", &cancelled.order_id);
    let Some(mut order) = view.get::<Order>(order_key)? else {
        return ignore(view);
    };
    if order.cancelled {
        return ignore(view);
    }
    view.update(("customer/", &order.customer), |c: &mut Customer| {
        c.orders -= 1;
        c.total_cents -= order.total_cents;
        c.cancelled += 1;
    })?;
    order.cancelled = true;
    view.put(order_key, &order)
}

fn ignore(view: &mut View) -> Result<(), Error> {
    view.update("stats", |s: &mut Stats| s.ignored += 1)
}

prism_guest::export_projector!(OrderTotals);
