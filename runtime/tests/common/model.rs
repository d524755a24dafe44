//! The example projectors' rules written again, plainly, in the tests: the whole views
//! event-counter, order-totals and account-balances must hold after a list of events, computed
//! without Prism, to compare with what Prism's projectors derived.

use prism::log::RecordedEvent;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// The whole views the three examples must hold after `events`.
pub fn views(events: &[RecordedEvent]) -> HashMap<&'static str, Map<String, Value>> {
    let mut counter: BTreeMap<String, u64> = BTreeMap::new();
    // order → (customer, total, cancelled); customer → (orders, total, cancelled).
    let mut orders: BTreeMap<String, (String, i64, bool)> = BTreeMap::new();
    let mut customers: BTreeMap<String, (u64, i64, u64)> = BTreeMap::new();
    let mut orders_ignored: Option<u64> = None;
    // account → (owner, balance, rejected overdrafts); stats (rejected, ignored).
    let mut accounts: BTreeMap<String, (String, i64, u64)> = BTreeMap::new();
    let mut account_stats: Option<(u64, u64)> = None;
    for e in events {
        let data: Value = serde_json::from_slice(&e.data).unwrap();
        let category = e.stream.split_once('-').map_or(&*e.stream, |(c, _)| c);
        for key in [
            "total".to_string(),
            format!("type/{}", e.event_type),
            format!("category/{category}"),
        ] {
            *counter.entry(key).or_default() += 1;
        }
        let text = |field: &str| data[field].as_str().unwrap().to_string();
        let amount = || data["amount"].as_i64().unwrap();
        match e.event_type.as_str() {
            "OrderPlaced" => {
                use std::collections::btree_map::Entry;
                match orders.entry(text("order_id")) {
                    Entry::Occupied(_) => *orders_ignored.get_or_insert(0) += 1,
                    Entry::Vacant(order) => {
                        let total = data["total_cents"].as_i64().unwrap();
                        let c = customers.entry(text("customer")).or_default();
                        c.0 += 1;
                        c.1 += total;
                        order.insert((text("customer"), total, false));
                    }
                }
            }
            "OrderCancelled" => match orders.get_mut(&text("order_id")) {
                Some(order) if !order.2 => {
                    let c = customers.get_mut(&order.0).unwrap();
                    c.0 -= 1;
                    c.1 -= order.1;
                    c.2 += 1;
                    order.2 = true;
                }
                _ => *orders_ignored.get_or_insert(0) += 1,
            },
            "AccountOpened" => {
                use std::collections::btree_map::Entry;
                match accounts.entry(text("account")) {
                    Entry::Occupied(_) => account_stats.get_or_insert((0, 0)).1 += 1,
                    Entry::Vacant(account) => {
                        account.insert((text("owner"), 0, 0));
                    }
                }
            }
            "Deposited" => move_money(
                &mut accounts,
                &mut account_stats,
                None,
                Some(text("account")),
                amount(),
            ),
            "Withdrawn" => move_money(
                &mut accounts,
                &mut account_stats,
                Some(text("account")),
                None,
                amount(),
            ),
            "TransferMade" => move_money(
                &mut accounts,
                &mut account_stats,
                Some(text("from")),
                Some(text("to")),
                amount(),
            ),
            _ => {}
        }
    }
    let mut order_view: Map<String, Value> = orders
        .into_iter()
        .map(|(id, (customer, total, cancelled))| {
            let value = json!({"customer": customer, "total_cents": total, "cancelled": cancelled});
            (format!("order/{id}"), value)
        })
        .chain(
            customers
                .into_iter()
                .map(|(id, (orders, total, cancelled))| {
                    let value =
                        json!({"orders": orders, "total_cents": total, "cancelled": cancelled});
                    (format!("customer/{id}"), value)
                }),
        )
        .collect();
    if let Some(ignored) = orders_ignored {
        order_view.insert("stats".into(), json!({"ignored": ignored}));
    }
    let mut account_view: Map<String, Value> = accounts
        .into_iter()
        .map(|(id, (owner, balance, rejected))| {
            let value =
                json!({"owner": owner, "balance": balance, "rejected_overdrafts": rejected});
            (format!("account/{id}"), value)
        })
        .collect();
    if let Some((rejected, ignored)) = account_stats {
        let value = json!({"rejected_overdrafts": rejected, "ignored": ignored});
        account_view.insert("stats".into(), value);
    }
    HashMap::from([
        (
            "event-counter",
            counter.into_iter().map(|(k, v)| (k, json!(v))).collect(),
        ),
        ("order-totals", order_view),
        ("account-balances", account_view),
    ])
}

/// account-balances' rule: money moves out of `from` and into `to` (either may be absent),
/// unless an account is unknown or the amount is not positive (ignored), or `from` holds less
/// (a rejected overdraft).
fn move_money(
    accounts: &mut BTreeMap<String, (String, i64, u64)>,
    stats: &mut Option<(u64, u64)>,
    from: Option<String>,
    to: Option<String>,
    amount: i64,
) {
    let unknown = |id: &Option<String>| id.as_ref().is_some_and(|id| !accounts.contains_key(id));
    if unknown(&from) || unknown(&to) || amount <= 0 || from.is_some() && from == to {
        stats.get_or_insert((0, 0)).1 += 1;
        return;
    }
    if let Some(from) = &from {
        let account = accounts.get_mut(from).unwrap();
        if account.1 < amount {
            account.2 += 1;
            stats.get_or_insert((0, 0)).0 += 1;
            return;
        }
        account.1 -= amount;
    }
    if let Some(to) = &to {
        accounts.get_mut(to).unwrap().1 += amount;
    }
}
