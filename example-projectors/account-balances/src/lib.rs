//! Per-account balances from `AccountOpened` / `Deposited` / `Withdrawn` / `TransferMade`.
//!
//! Events (JSON data; amounts are integer cents):
//! - `AccountOpened { "account": "a-1", "owner": "Ada" }`
//! - `Deposited { "account": "a-1", "amount": 500 }`
//! - `Withdrawn { "account": "a-1", "amount": 200 }`
//! - `TransferMade { "from": "a-1", "to": "a-2", "amount": 100 }`
//!
//! A withdrawal or transfer larger than the balance is rejected: no money moves and the
//! account's `rejected_overdrafts` grows. Operations on accounts never opened, a second
//! `AccountOpened`, and non-positive amounts change no balance and count in `stats.ignored`.
//!
//! View keys:
//! - `account/<id>` → `{ "owner": "...", "balance": n, "rejected_overdrafts": n }`
//! - `stats` → `{ "rejected_overdrafts": n, "ignored": n }`

use prism_guest::{Error, Event, Projector, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct AccountOpened {
    account: String,
    owner: String,
}

#[derive(Deserialize)]
struct Movement {
    account: String,
    amount: i64,
}

#[derive(Deserialize)]
struct TransferMade {
    from: String,
    to: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
    rejected_overdrafts: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    rejected_overdrafts: u64,
    ignored: u64,
}

struct AccountBalances;

impl Projector for AccountBalances {
    const NAME: &'static str = "account-balances";
    const SCHEMA_VERSION: u32 = 1;

    fn subscription() -> Subscription {
        Subscription::event_types(["AccountOpened", "Deposited", "Withdrawn", "TransferMade"])
    }

    fn apply(event: &Event<'_>, view: &mut View) -> Result<(), Error> {
        match event.event_type {
            "AccountOpened" => opened(event.data()?, view),
            "Deposited" => {
                let m: Movement = event.data()?;
                move_money(view, None, Some(&m.account), m.amount)
            }
            "Withdrawn" => {
                let m: Movement = event.data()?;
                move_money(view, Some(&m.account), None, m.amount)
            }
            "TransferMade" => {
                let t: TransferMade = event.data()?;
                move_money(view, Some(&t.from), Some(&t.to), t.amount)
            }
            _ => Ok(()),
        }
    }
}

fn account_key(id: &str) -> (&'static str, &str) {
    ("account/", id)
}

fn opened(opened: AccountOpened, view: &mut View) -> Result<(), Error> {
    let key = account_key(&opened.account);
    if view.get::<Account>(&key)?.is_some() {
        return count(view, |s| s.ignored += 1);
    }
    view.put(
        &key,
        &Account {
            owner: opened.owner,
            balance: 0,
            rejected_overdrafts: 0,
        },
    )
}

/// Moves `amount` out of `from` (when given) into `to` (when given), or rejects the movement.
fn move_money(
    view: &mut View,
    from: Option<&str>,
    to: Option<&str>,
    amount: i64,
) -> Result<(), Error> {
    let load = |view: &mut View, id: Option<&str>| -> Result<Option<Option<Account>>, Error> {
        id.map(|id| view.get::<Account>(&account_key(id)))
            .transpose()
    };
    let (source, target) = (load(view, from)?, load(view, to)?);
    let unknown = matches!(source, Some(None)) || matches!(target, Some(None));
    if unknown || amount <= 0 || from.is_some() && from == to {
        return count(view, |s| s.ignored += 1);
    }
    if let (Some(id), Some(Some(mut account))) = (from, source) {
        if account.balance < amount {
            account.rejected_overdrafts += 1;
            view.put(&account_key(id), &account)?;
            return count(view, |s| s.rejected_overdrafts += 1);
        }
        account.balance -= amount;
        view.put(&account_key(id), &account)?;
    }
    if let (Some(id), Some(Some(mut account))) = (to, target) {
        account.balance += amount;
        view.put(&account_key(id), &account)?;
    }
    Ok(())
}

fn count(view: &mut View, f: impl FnOnce(&mut Stats)) -> Result<(), Error> {
    view.update("stats", f)
}

prism_guest::export_projector!(AccountBalances);
