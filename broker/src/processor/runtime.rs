//! GET_BROKER_RUNTIME_INFO (28): the `KVTable` `mqadmin clusterList` and `brokerStatus`
//! read. Figures Sluice has are real (rates, totals, disk, the earliest message); Java
//! thread-pool figures it has no counterpart for are 0.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_protocol::message::record::RecordView;
use sluice_protocol::RemotingCommand;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;

pub(super) fn runtime_info(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let body = serde_json::json!({ "table": table(ctx) });
    Ok(reply::ok(req).with_body(body.to_string().into_bytes()))
}

fn table(ctx: &BrokerContext) -> BTreeMap<&'static str, String> {
    let rates = |w: u64| ctx.rates.tps(Duration::from_secs(w));
    let (put10, get10) = rates(10);
    let (put60, get60) = rates(60);
    let (put600, get600) = rates(600);
    let day = ctx.rates.day_totals();
    let stats = ctx.counters.snapshot();
    let store = ctx.store.stats();
    let disk = ctx.store.disk_usage().map_or(0.0, |u| u.ratio());
    let earliest = ctx
        .store
        .read_record(store.min_offset)
        .ok()
        .and_then(|r| {
            RecordView::parse(&r, usize::MAX)
                .ok()
                .map(|v| v.header.store_timestamp)
        })
        .unwrap_or(0);
    let mut t = BTreeMap::new();
    t.insert(
        "brokerVersionDesc",
        format!("V4_9_4 (sluice {})", env!("CARGO_PKG_VERSION")),
    );
    t.insert("putTps", format!("{put10:.2} {put60:.2} {put600:.2}"));
    t.insert(
        "getTransferedTps",
        format!("{get10:.2} {get60:.2} {get600:.2}"),
    );
    t.insert(
        "getTransferredTps",
        format!("{get10:.2} {get60:.2} {get600:.2}"),
    );
    t.insert("msgPutTotalTodayNow", stats.messages_stored.to_string());
    t.insert("msgGetTotalTodayNow", stats.messages_pulled.to_string());
    t.insert("msgPutTotalTodayMorning", day.put_today_morning.to_string());
    t.insert("msgGetTotalTodayMorning", day.get_today_morning.to_string());
    t.insert(
        "msgPutTotalYesterdayMorning",
        day.put_yesterday_morning.to_string(),
    );
    t.insert(
        "msgGetTotalYesterdayMorning",
        day.get_yesterday_morning.to_string(),
    );
    t.insert("commitLogDiskRatio", format!("{disk:.4}"));
    t.insert("consumeQueueDiskRatio", format!("{disk:.4}"));
    t.insert("earliestMessageTimeStamp", earliest.to_string());
    t.insert("commitLogMinOffset", store.min_offset.to_string());
    t.insert("commitLogMaxOffset", store.written.to_string());
    t.insert(
        "dispatchBehindBytes",
        ctx.store.dispatch_lag_bytes().to_string(),
    );
    for zero in [
        "pageCacheLockTimeMills",
        "sendThreadPoolQueueSize",
        "pullThreadPoolQueueSize",
        "sendThreadPoolQueueHeadWaitTimeMills",
        "pullThreadPoolQueueHeadWaitTimeMills",
        "queryThreadPoolQueueSize",
        "queryThreadPoolQueueHeadWaitTimeMills",
    ] {
        t.insert(zero, "0".to_owned());
    }
    t
}
