//! The rival: the `order-totals` projection written the way a user would without Prism — a
//! single-threaded Rust consumer over SQLite (rusqlite; WAL, `synchronous=NORMAL`), an
//! `orders` lookup table and a `customers` table, a transaction per 1000 events of the log with
//! the checkpoint in it. It reads the same log through the same reader Prism's runners use, so
//! the comparison is about everything after the read: the projection and its store.

use crate::native::{OrderCancelled, OrderPlaced};
use prism::log::EventLog;
use prism::store::ViewSnapshot;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;

/// Events per transaction (and checkpoint).
const BATCH: usize = 1000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY,
        customer TEXT NOT NULL,
        total_cents INTEGER NOT NULL,
        cancelled INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS customers (
        customer TEXT PRIMARY KEY,
        orders INTEGER NOT NULL,
        total_cents INTEGER NOT NULL,
        cancelled INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY, ignored INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY, position INTEGER NOT NULL);
    INSERT OR IGNORE INTO stats VALUES (0, 0);
    INSERT OR IGNORE INTO checkpoint VALUES (0, 0);
";

/// Opens (or creates) the rival's database.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Projects the log from the rival's checkpoint to the head; returns the new checkpoint.
pub fn replay(log: &EventLog, conn: &mut Connection) -> rusqlite::Result<u64> {
    let mut checkpoint =
        conn.query_row("SELECT position FROM checkpoint WHERE id = 0", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
    loop {
        let tx = conn.transaction()?;
        let mut failed = None;
        let last = {
            let mut find = tx.prepare_cached(
                "SELECT customer, total_cents, cancelled FROM orders WHERE order_id = ?1",
            )?;
            let mut add_order = tx.prepare_cached(
                "INSERT INTO orders (order_id, customer, total_cents, cancelled) VALUES (?1, ?2, ?3, 0)",
            )?;
            let mut cancel_order =
                tx.prepare_cached("UPDATE orders SET cancelled = 1 WHERE order_id = ?1")?;
            let mut placed_for = tx.prepare_cached(
                "INSERT INTO customers (customer, orders, total_cents, cancelled) VALUES (?1, 1, ?2, 0)
                 ON CONFLICT (customer) DO UPDATE SET orders = orders + 1, total_cents = total_cents + ?2",
            )?;
            let mut cancelled_for = tx.prepare_cached(
                "UPDATE customers SET orders = orders - 1, total_cents = total_cents - ?2,
                 cancelled = cancelled + 1 WHERE customer = ?1",
            )?;
            let mut ignore =
                tx.prepare_cached("UPDATE stats SET ignored = ignored + 1 WHERE id = 0")?;
            let mut apply = |event_type: &str, data: &[u8]| -> rusqlite::Result<()> {
                match event_type {
                    "OrderPlaced" => {
                        let placed: OrderPlaced =
                            serde_json::from_slice(data).expect("OrderPlaced data");
                        let known = find.query_row([&placed.order_id], |_| Ok(())).optional()?;
                        if known.is_some() {
                            ignore.execute([])?;
                            return Ok(());
                        }
                        placed_for.execute(params![placed.customer, placed.total_cents])?;
                        add_order.execute(params![
                            placed.order_id,
                            placed.customer,
                            placed.total_cents
                        ])?;
                    }
                    "OrderCancelled" => {
                        let cancelled: OrderCancelled =
                            serde_json::from_slice(data).expect("OrderCancelled data");
                        let order = find
                            .query_row([&cancelled.order_id], |r| {
                                Ok((
                                    r.get::<_, String>(0)?,
                                    r.get::<_, i64>(1)?,
                                    r.get::<_, bool>(2)?,
                                ))
                            })
                            .optional()?;
                        match order {
                            Some((customer, total, false)) => {
                                cancelled_for.execute(params![customer, total])?;
                                cancel_order.execute([&cancelled.order_id])?;
                            }
                            _ => {
                                ignore.execute([])?;
                            }
                        }
                    }
                    _ => {}
                }
                Ok(())
            };
            log.visit_from(checkpoint + 1, BATCH, |_, event| {
                match apply(event.event_type, event.data) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .expect("reading the log")
        };
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(last) = last else {
            return Ok(checkpoint);
        };
        tx.execute(
            "UPDATE checkpoint SET position = ?1 WHERE id = 0",
            [last as i64],
        )?;
        tx.commit()?;
        checkpoint = last;
    }
}

/// Whether the rival's tables say exactly what Prism's `order-totals` view says; the first
/// difference otherwise.
pub fn compare(conn: &Connection, view: &ViewSnapshot) -> Result<(), String> {
    let mut prism = BTreeMap::new();
    view.for_each(|key, value| {
        let value: serde_json::Value = serde_json::from_slice(value).expect("JSON in the view");
        prism.insert(key.to_string(), value);
    })
    .map_err(|e| e.to_string())?;
    let mut rival = BTreeMap::new();
    let rows = |sql: &str, f: &mut dyn FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>| {
        let mut statement = conn.prepare(sql)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            f(row)?;
        }
        Ok::<_, rusqlite::Error>(())
    };
    rows(
        "SELECT customer, orders, total_cents, cancelled FROM customers",
        &mut |r| {
            rival.insert(
                format!("customer/{}", r.get::<_, String>(0)?),
                serde_json::json!({
                    "orders": r.get::<_, i64>(1)?,
                    "total_cents": r.get::<_, i64>(2)?,
                    "cancelled": r.get::<_, i64>(3)?,
                }),
            );
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    rows(
        "SELECT order_id, customer, total_cents, cancelled FROM orders",
        &mut |r| {
            rival.insert(
                format!("order/{}", r.get::<_, String>(0)?),
                serde_json::json!({
                    "customer": r.get::<_, String>(1)?,
                    "total_cents": r.get::<_, i64>(2)?,
                    "cancelled": r.get::<_, bool>(3)?,
                }),
            );
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    let ignored: i64 = conn
        .query_row("SELECT ignored FROM stats WHERE id = 0", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if ignored > 0 {
        rival.insert("stats".into(), serde_json::json!({ "ignored": ignored }));
    }
    if prism.len() != rival.len() {
        return Err(format!(
            "Prism's view has {} keys, the rival's tables {}",
            prism.len(),
            rival.len()
        ));
    }
    match prism.iter().zip(&rival).find(|(a, b)| a != b) {
        None => Ok(()),
        Some((a, b)) => Err(format!("Prism has {a:?} where the rival has {b:?}")),
    }
}
