//! The futures of the hot calls stay small. A future is copied whole each time it moves (into a
//! handler's box, into a task, through a task's stages), and an `async fn`'s future is as large as
//! its largest path: the ordinary path of a check or a debit (a transaction of its own,
//! kilobytes) is boxed so that it does not size the queued one (docs/benchmarks.md, finding 48).
//! Nothing here is polled: the pool is never asked for a connection.

use allot_domain::charge::Mode;

use super::{Amount, CheckCommand, Credits, DebitCommand};
use crate::ids::{AccountId, IdempotencyKey, Meter, TenantId};
use crate::service::pricing::Pricing;
use crate::service::rate::RateLimiter;
use crate::service::Ctx;

/// Most bytes a queued check's future may take (7.7 KB with the ordinary path inline).
const CHECK_FUTURE_BYTES_MAX: usize = 1_024;
/// Most bytes a queued debit's future may take (5.5–5.9 KB with the ordinary path inline).
const DEBIT_FUTURE_BYTES_MAX: usize = 4_096;

fn credits() -> Credits {
    let ctx = Ctx::unconnected();
    let rate = RateLimiter::new(None, std::time::Duration::from_millis(100));
    Credits::new(ctx.clone(), rate, Pricing::new(ctx), 2, Some(2))
}

fn lines() -> Vec<(Meter, Amount)> {
    vec![(Meter::parse("tokens").expect("meter"), Amount::Credits(1))]
}

#[tokio::test]
async fn a_check_and_a_debit_are_small_futures() {
    let credits = credits();
    let (tenant, account) = (TenantId(uuid::Uuid::from_u128(7)), AccountId::parse("acct").expect("account"));

    let check = credits.check(tenant, CheckCommand { account: account.clone(), lines: lines(), subsidy: None });
    let check_bytes = std::mem::size_of_val(&check);
    assert!(check_bytes <= CHECK_FUTURE_BYTES_MAX, "a check's future takes {check_bytes} bytes");

    let debit = credits.debit(
        tenant,
        DebitCommand {
            account,
            lines: lines(),
            mode: Mode::Gate,
            key: IdempotencyKey::parse("k-1").expect("key"),
            attributes: Default::default(),
            subsidy: None,
        },
    );
    let debit_bytes = std::mem::size_of_val(&debit);
    assert!(debit_bytes <= DEBIT_FUTURE_BYTES_MAX, "a debit's future takes {debit_bytes} bytes");
}
