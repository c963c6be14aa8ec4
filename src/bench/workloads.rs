//! The workloads of `liaison bench`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{BenchResult, Report, Target, alert, histogram, micros};
use liaison::agent::{self, AgentConfig};
use liaison::alert::system_time;
use liaison::proto as pb;
use liaison::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

/// Time spent before measuring, so connections and caches are warm.
const WARMUP: Duration = Duration::from_secs(1);

/// Durable publishes with `window` in flight for `secs` (after a warm-up):
/// unary calls from `window` tasks, or one PublishStream with `window`
/// unanswered alerts.
///
/// # Errors
/// When the broker cannot be reached or refuses the load.
pub async fn publish(
    target: &Target,
    window: usize,
    size: usize,
    secs: u64,
    stream: bool,
) -> BenchResult<Report> {
    let mut report = Report::new(
        "publish",
        json!({"window": window, "size": size, "secs": secs, "mode": if stream { "stream" } else { "unary" }}),
    );
    let measure = Duration::from_secs(secs);
    let (count, elapsed, hist) = if stream {
        publish_stream(target, window, size, measure).await?
    } else {
        publish_unary(target, window, size, measure).await?
    };
    report.count = count;
    report.elapsed = elapsed;
    report.latency = hist;
    Ok(report)
}

type Measured = (u64, Duration, hdrhistogram::Histogram<u64>);

async fn publish_unary(
    target: &Target,
    window: usize,
    size: usize,
    measure: Duration,
) -> BenchResult<Measured> {
    let client = target.client("bench-publisher").await?;
    let start = Instant::now() + WARMUP;
    let end = start + measure;
    let mut tasks = Vec::new();
    for _ in 0..window.max(1) {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut count = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                client
                    .publish(pb::PublishRequest {
                        alert: Some(alert(size)),
                    })
                    .await?;
                if sent >= start {
                    hist.record(micros(sent.elapsed()))?;
                    count += 1;
                }
            }
            BenchResult::Ok((count, hist))
        }));
    }
    let mut total = 0;
    let mut hist = histogram();
    for t in tasks {
        let (count, h) = t.await??;
        total += count;
        hist.add(&h)?;
    }
    Ok((total, measure, hist))
}

async fn publish_stream(
    target: &Target,
    window: usize,
    size: usize,
    measure: Duration,
) -> BenchResult<Measured> {
    let mut client = target.client("bench-publisher").await?;
    let (tx, rx) = mpsc::channel(window.max(1));
    let slots = Arc::new(Semaphore::new(window.max(1)));
    // Send times of the unanswered alerts, in order (answers come in order).
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let start = Instant::now() + WARMUP;
    let end = start + measure;
    let producer = {
        let (slots, sent) = (slots.clone(), sent.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                permit.forget();
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(Instant::now());
                if tx
                    .send(pb::PublishRequest {
                        alert: Some(alert(size)),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut answers = client
        .publish_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut hist = histogram();
    let mut count = 0;
    while let Some(answer) = answers.next().await {
        let answer = answer?;
        if let Some(pb::publish_stream_response::Result::Error(e)) = answer.result {
            return Err(format!("alert refused: {}", e.message).into());
        }
        let at = sent.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        slots.add_permits(1);
        if let Some(at) = at
            && at >= start
            && at < end
        {
            hist.record(micros(at.elapsed()))?;
            count += 1;
        }
    }
    producer.await?;
    Ok((count, measure, hist))
}

/// Publish → delivery latency: `rate` alerts per second for `secs`, one
/// subscriber acknowledging everything.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn e2e(target: &Target, rate: u64, size: usize, secs: u64) -> BenchResult<Report> {
    let mut report = Report::new("e2e", json!({"rate": rate, "size": size, "secs": secs}));
    let mut subscriber = target.client("bench-subscriber").await?;
    let (ack_tx, ack_rx) = mpsc::channel(1024);
    ack_tx
        .send(open_request("", 1024, false))
        .await
        .map_err(|_| "subscriber closed")?;
    let mut deliveries = subscriber
        .subscribe(ReceiverStream::new(ack_rx))
        .await?
        .into_inner();
    deliveries.message().await?; // opened
    let total = rate.max(1) * secs;
    let receiver = tokio::spawn(receive(
        deliveries,
        ack_tx,
        total,
        1,
        Duration::from_secs(30),
    ));
    let mut publisher = target.client("bench-publisher").await?;
    let started = Instant::now();
    let acks = publish_at_rate(&mut publisher, rate, total, size).await?;
    let (got, hist) = receiver.await??;
    report.count = got;
    report.elapsed = started.elapsed();
    report.latency = hist;
    report.extra.insert(
        "publish_ack_p50_us".into(),
        json!(acks.value_at_quantile(0.5)),
    );
    report.extra.insert(
        "publish_ack_p99_us".into(),
        json!(acks.value_at_quantile(0.99)),
    );
    Ok(report)
}

/// Publishes `total` alerts at `rate` a second, one after the other; the
/// latency of each acknowledgement.
///
/// # Errors
/// When a publish fails.
pub(super) async fn publish_at_rate(
    publisher: &mut BrokerClient<Channel>,
    rate: u64,
    total: u64,
    size: usize,
) -> BenchResult<hdrhistogram::Histogram<u64>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = histogram();
    for _ in 0..total {
        tick.tick().await;
        let sent = Instant::now();
        publisher
            .publish(pb::PublishRequest {
                alert: Some(alert(size)),
            })
            .await?;
        acks.record(micros(sent.elapsed()))?;
    }
    Ok(acks)
}

/// Takes `total` deliveries from a feed (or stops after `patience` without
/// one), recording publish → delivery latency, acknowledging every
/// `ack_every` deliveries.
pub(super) async fn receive(
    mut stream: tonic::Streaming<pb::SubscribeResponse>,
    acks: mpsc::Sender<pb::SubscribeRequest>,
    total: u64,
    ack_every: usize,
    patience: Duration,
) -> BenchResult<(u64, hdrhistogram::Histogram<u64>)> {
    let mut hist = histogram();
    let mut got = 0u64;
    let mut pending = Vec::new();
    while got < total {
        let Ok(Some(msg)) = tokio::time::timeout(patience, stream.message()).await? else {
            break;
        };
        let Some(pb::subscribe_response::Event::Delivery(d)) = msg.event else {
            continue;
        };
        let Some(record) = d.record else { continue };
        if let Some(sent) = record
            .alert
            .as_ref()
            .and_then(|a| a.sent.as_ref())
            .and_then(system_time)
            && let Ok(latency) = SystemTime::now().duration_since(sent)
        {
            hist.record(micros(latency))?;
        }
        got += 1;
        pending.push(record.seq);
        if pending.len() >= ack_every || got == total {
            let seqs = std::mem::take(&mut pending);
            let ack = pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Ack(pb::Ack { seqs })),
            };
            if acks.send(ack).await.is_err() {
                break;
            }
        }
    }
    Ok((got, hist))
}

pub(super) fn open_request(feed: &str, window: u32, from_start: bool) -> pb::SubscribeRequest {
    use pb::start_position::Position;
    pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Open(pb::OpenFeed {
            feed: feed.to_owned(),
            filter: Some(pb::Filter {
                include_test: true,
                ..Default::default()
            }),
            start: Some(pb::StartPosition {
                position: Some(if from_start {
                    Position::All(true)
                } else {
                    Position::NewOnly(true)
                }),
            }),
            max_in_flight: window,
            ack_wait: None,
        })),
    }
}

/// Fan-out: one publisher, `feeds` durable feeds (one connection each),
/// every feed receiving all `count` alerts.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn fanout(target: &Target, feeds: usize, count: u64, size: usize) -> BenchResult<Report> {
    let mut report = Report::new(
        "fanout",
        json!({"feeds": feeds, "alerts": count, "size": size}),
    );
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut receivers = Vec::new();
    for i in 0..feeds {
        let mut client = target.client(&format!("bench-feed-{i}")).await?;
        let (ack_tx, ack_rx) = mpsc::channel(1024);
        ack_tx
            .send(open_request(
                &format!("fanout-{}-{i}", &run[..12]),
                1024,
                false,
            ))
            .await
            .map_err(|_| "subscriber closed")?;
        let mut stream = client
            .subscribe(ReceiverStream::new(ack_rx))
            .await?
            .into_inner();
        stream.message().await?; // opened
        receivers.push(tokio::spawn(async move {
            let received = receive(stream, ack_tx, count, 64, Duration::from_secs(60)).await;
            drop(client);
            received
        }));
    }
    let started = Instant::now();
    let mut publisher = target.client("bench-publisher").await?;
    let requests = futures::stream::iter((0..count).map(move |_| pb::PublishRequest {
        alert: Some(alert(size)),
    }));
    let mut answers = publisher.publish_stream(requests).await?.into_inner();
    while let Some(a) = answers.next().await {
        a?;
    }
    let mut hist = histogram();
    let mut delivered = 0;
    for r in receivers {
        let (got, h) = r.await??;
        delivered += got;
        hist.add(&h)?;
    }
    report.count = delivered;
    report.elapsed = started.elapsed();
    report.latency = hist;
    Ok(report)
}

/// Drain: an agent holding `count` queued alerts behind a cut link; the time
/// from link-up to every alert acknowledged upstream.
///
/// # Errors
/// When the local broker or agent cannot be set up.
pub async fn drain(target: &mut Target, count: u64, size: usize) -> BenchResult<Report> {
    let mut report = Report::new("drain", json!({"alerts": count, "size": size}));
    let local = target
        .local_broker()
        .ok_or("drain needs a local broker (leave out --broker)")?;
    // The link is down while the agent queues: the broker is stopped, and
    // started again on the same address to bring the link up. (A proxy in
    // between would put its own copying into the figure.)
    let broker_addr = local.addr;
    local.stop().await;
    let files = local.node("bench-post")?;
    let mut config = AgentConfig::new(
        format!("https://{broker_addr}"),
        files,
        local.dir.join("agent"),
    );
    config.link.backoff_min = Duration::from_millis(20);
    config.link.backoff_max = Duration::from_millis(50);
    config.broker.retention.max_age = None;
    config.store.key = local.key("agent");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(agent::run(listener, config, shutdown.clone()));
    let mut post = liaison::client::connect(&url, None).await?;
    let requests = futures::stream::iter((0..count).map(move |_| pb::PublishRequest {
        alert: Some(alert(size)),
    }));
    let mut answers = post.publish_stream(requests).await?.into_inner();
    while let Some(a) = answers.next().await {
        a?;
    }
    let channel = liaison::client::endpoint(&url, None)?.connect().await?;
    let mut status = pb::agent_client::AgentClient::new(channel);
    local.start_at(broker_addr).await?;
    let mut up = None;
    let elapsed = loop {
        let s = status.status(pb::AgentStatusRequest {}).await?.into_inner();
        if up.is_none() && s.link_state == pb::LinkState::Up as i32 {
            up = Some(Instant::now());
        }
        if s.outbox_depth == 0 {
            break up.map_or(Duration::ZERO, |t| t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    shutdown.cancel();
    let _ = agent.await;
    report.count = count;
    report.elapsed = elapsed;
    Ok(report)
}

/// Restart: a broker holding `count` alerts is stopped; the time until it
/// serves again (its health service answers SERVING).
///
/// # Errors
/// When the local broker cannot be set up.
pub async fn restart(target: &mut Target, count: u64, size: usize) -> BenchResult<Report> {
    let mut report = Report::new("restart", json!({"alerts": count, "size": size}));
    let mut publisher = target.client("bench-publisher").await?;
    let mut left = count;
    while left > 0 {
        let batch = left.min(50_000);
        let requests = futures::stream::iter((0..batch).map(move |_| pb::PublishRequest {
            alert: Some(alert(size)),
        }));
        let mut answers = publisher.publish_stream(requests).await?.into_inner();
        while let Some(a) = answers.next().await {
            a?;
        }
        left -= batch;
    }
    drop(publisher);
    let local = target
        .local_broker()
        .ok_or("restart needs a local broker (leave out --broker)")?;
    local.stop().await;
    let started = Instant::now();
    local.start().await?;
    let files = local.node("bench-probe")?;
    let url = format!("https://{}", local.addr);
    loop {
        if let Ok(ep) = liaison::client::endpoint(&url, Some(&files))
            && let Ok(channel) = ep.connect().await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let req = tonic_health::pb::HealthCheckRequest {
                service: "liaison.v1.Broker".into(),
            };
            if let Ok(r) = health.check(req).await
                && r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    target.url = format!(
        "https://{}",
        target
            .local_broker()
            .map_or(String::new(), |l| l.addr.to_string())
    );
    report.count = count;
    report.elapsed = started.elapsed();
    report.extra.insert(
        "serving_again_s".into(),
        json!(report.elapsed.as_secs_f64()),
    );
    Ok(report)
}

/// Resident memory of this process in bytes (Linux), if known.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Idle feeds: opens `feeds` durable subscriptions (100 per connection) on a
/// local broker and reports the growth of resident memory per feed. Client
/// and broker share the process, so the figure includes both sides: an
/// upper bound for the broker's share.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn idle(target: &Target, feeds: usize) -> BenchResult<Report> {
    const PER_CONNECTION: usize = 100;
    let mut report = Report::new("idle", json!({"feeds": feeds}));
    let before = resident_bytes().ok_or("resident memory is only measured on Linux")?;
    let started = Instant::now();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut held = Vec::new();
    for c in 0..feeds.div_ceil(PER_CONNECTION) {
        let client = target.client(&format!("bench-idle-{c}")).await?;
        for i in 0..PER_CONNECTION.min(feeds - c * PER_CONNECTION) {
            let mut client = client.clone();
            let (tx, rx) = mpsc::channel(4);
            tx.send(open_request(&format!("idle-{}-{i}", &run[..12]), 64, false))
                .await
                .map_err(|_| "subscriber closed")?;
            let mut stream = client
                .subscribe(ReceiverStream::new(rx))
                .await?
                .into_inner();
            stream.message().await?; // opened: the broker holds the feed now
            held.push((tx, stream));
        }
    }
    let after = resident_bytes().unwrap_or(before);
    report.count = feeds as u64;
    report.elapsed = started.elapsed();
    let per_feed = after.saturating_sub(before) / feeds.max(1) as u64;
    report
        .extra
        .insert("rss_before_bytes".into(), json!(before));
    report.extra.insert("rss_after_bytes".into(), json!(after));
    report
        .extra
        .insert("bytes_per_feed".into(), json!(per_feed));
    drop(held);
    Ok(report)
}
