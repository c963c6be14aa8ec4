//! Feed promises: at-least-once with redelivery, the flow-control window,
//! resuming after a reconnect and after a broker restart, start positions
//! and takeover of a durable feed.

use liaison::proto as pb;
use liaison_testkit::*;

fn short_wait(feed: &str, window: u32) -> pb::OpenFeed {
    pb::OpenFeed {
        max_in_flight: window,
        ack_wait: Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..open(feed, pb::Filter::default())
    }
}

async fn publish_n(broker: &TestBroker, n: usize) -> Vec<pb::PublishResponse> {
    let mut post = broker.client(TJ_POST).await;
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(publish(&mut post, alert(pb::Category::Drugs, &format!("alert {i}"))).await);
    }
    acks
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_redelivered_after_the_deadline() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, short_wait("redeliver", 8)).await;
    let acks = publish_n(&broker, 2).await;

    let first = sub.next().await;
    let second = sub.next().await;
    assert_eq!((seq_of(&first), first.attempt), (acks[0].seq, 1));
    assert_eq!((seq_of(&second), second.attempt), (acks[1].seq, 1));
    sub.ack(&[acks[1].seq]).await;

    // Only the unacknowledged one comes back, with a higher attempt.
    let again = sub.next().await;
    assert_eq!((seq_of(&again), again.attempt), (acks[0].seq, 2));
    let third = sub.next().await;
    assert_eq!((seq_of(&third), third.attempt), (acks[0].seq, 3));
    sub.ack(&[acks[0].seq]).await;
    sub.close().await;

    // Both are acknowledged now: a reopened feed has nothing to deliver and
    // its floor covers both.
    let sub = Subscriber::open(&mut officer, short_wait("redeliver", 8)).await;
    assert_eq!(sub.opened.ack_floor, acks[1].seq);
    assert!(!sub.opened.created);
}

#[tokio::test]
async fn the_in_flight_window_bounds_unacknowledged_deliveries() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, short_wait("window", 3)).await;
    let acks = publish_n(&broker, 10).await;

    let mut got: Vec<(u64, u32)> = Vec::new();
    for _ in 0..6 {
        let d = sub.next().await;
        got.push((seq_of(&d), d.attempt));
    }
    // With nothing acknowledged, the 4th alert never goes out: after the first
    // three come only their redeliveries.
    let s: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(
        got,
        [
            (s[0], 1),
            (s[1], 1),
            (s[2], 1),
            (s[0], 2),
            (s[1], 2),
            (s[2], 2)
        ]
    );

    sub.ack(&[s[0], s[1], s[2]]).await;
    let mut next = Vec::new();
    while next.len() < 3 {
        let d = sub.next().await;
        if d.attempt == 1 {
            next.push(seq_of(&d));
        }
    }
    assert_eq!(next, [s[3], s[4], s[5]]);
}

#[tokio::test]
async fn a_durable_feed_resumes_where_it_left_off_after_a_reconnect() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    sub.close().await;
    let acks = publish_n(&broker, 6).await;

    let mut sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    assert!(!sub.opened.created);
    for a in &acks[..3] {
        let d = sub.next().await;
        assert_eq!(seq_of(&d), a.seq);
        sub.ack(&[a.seq]).await;
    }
    sub.close().await;

    // A new connection, as after a dropped link.
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    assert_eq!(sub.opened.ack_floor, acks[2].seq);
    for a in &acks[3..] {
        assert_eq!(seq_of(&sub.next().await), a.seq);
    }

    // Another node's feed of the same name is a different feed.
    let mut other = broker.client(UZ_OFFICE).await;
    let theirs = Subscriber::open(&mut other, open("main", pb::Filter::default())).await;
    assert!(theirs.opened.created);
}

#[tokio::test]
async fn a_durable_feed_resumes_after_a_broker_restart() {
    let mut broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(
        &mut officer,
        pb::OpenFeed {
            start: start_all(),
            ..open("main", pb::Filter::default())
        },
    )
    .await;
    let acks = publish_n(&broker, 5).await;
    // Acknowledge 1, 2 and 4 (not 3).
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.push(seq_of(&sub.next().await));
    }
    assert_eq!(delivered, acks.iter().map(|a| a.seq).collect::<Vec<_>>());
    sub.ack(&[acks[0].seq, acks[1].seq, acks[3].seq]).await;
    sub.close().await;

    broker.restart().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    assert_eq!(sub.opened.ack_floor, acks[1].seq);
    assert_eq!(seq_of(&sub.next().await), acks[2].seq);
    assert_eq!(seq_of(&sub.next().await), acks[4].seq);
}

#[tokio::test]
async fn start_positions_new_all_sequence_and_time() {
    let broker = TestBroker::start().await;
    let acks = publish_n(&broker, 6).await;
    let mut officer = broker.client(AF_OFFICE).await;
    let position = |p| pb::OpenFeed {
        start: Some(pb::StartPosition { position: Some(p) }),
        ..open("", pb::Filter::default())
    };
    use pb::start_position::Position;

    let mut all = Subscriber::open(&mut officer, position(Position::All(true))).await;
    assert_eq!(seq_of(&all.next().await), acks[0].seq);

    let mut from_seq =
        Subscriber::open(&mut officer, position(Position::FromSeq(acks[4].seq))).await;
    assert_eq!(seq_of(&from_seq.next().await), acks[4].seq);

    let when = acks[2].received_at.expect("received_at");
    let mut from_time = Subscriber::open(&mut officer, position(Position::FromTime(when))).await;
    assert_eq!(seq_of(&from_time.next().await), acks[2].seq);

    let mut new_only = Subscriber::open(&mut officer, position(Position::NewOnly(true))).await;
    assert_eq!(new_only.opened.head_seq, acks[5].seq);
    let later = publish_n(&broker, 1).await;
    assert_eq!(seq_of(&new_only.next().await), later[0].seq);
}

#[tokio::test]
async fn opening_a_durable_feed_again_takes_it_over() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut old = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    let mut other_link = broker.client(AF_OFFICE).await;
    let mut new = Subscriber::open(&mut other_link, open("main", pb::Filter::default())).await;
    let ended = old.next_event().await.expect_err("older stream ends");
    assert_eq!(ended.code(), tonic::Code::Aborted);
    let acks = publish_n(&broker, 1).await;
    assert_eq!(seq_of(&new.next().await), acks[0].seq);
}

#[tokio::test]
async fn bad_open_requests_are_refused_with_the_field_named() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let cases = [
        (open("Main Feed", pb::Filter::default()), "open.feed"),
        (
            pb::OpenFeed {
                max_in_flight: 5000,
                ..open("x", pb::Filter::default())
            },
            "open.max_in_flight",
        ),
        (
            pb::OpenFeed {
                ack_wait: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
                ..open("x", pb::Filter::default())
            },
            "open.ack_wait",
        ),
        (
            open(
                "x",
                pb::Filter {
                    origin_countries: vec!["tj".into()],
                    ..Default::default()
                },
            ),
            "open.filter.origin_countries[0]",
        ),
        (
            open(
                "x",
                pb::Filter {
                    categories: vec![99],
                    ..Default::default()
                },
            ),
            "open.filter.categories[0]",
        ),
    ];
    for (req, field) in cases {
        let err = Subscriber::try_open(&mut officer, req)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
}

#[tokio::test]
async fn a_feed_with_acks_above_a_gap_resumes_with_a_smaller_window() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, short_wait("gap", 64)).await;
    let acks = publish_n(&broker, 40).await;
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    for _ in 0..40 {
        sub.next().await;
    }
    // Everything but the first is acknowledged: 39 acks above the floor.
    sub.ack(&seqs[1..]).await;
    sub.close().await;

    // Reopened with a window of 1 (16 × 1 < 39 acked above the floor), the
    // unacknowledged first alert still comes, and then nothing else is owed.
    let mut sub = Subscriber::open(&mut officer, short_wait("gap", 1)).await;
    let d = sub.next().await;
    assert_eq!(seq_of(&d), seqs[0]);
    sub.ack(&[seqs[0]]).await;
    let later = publish_n(&broker, 1).await;
    let next = sub.next().await;
    assert_eq!(
        seq_of(&next),
        later[0].seq,
        "acknowledged alerts are not delivered again"
    );
}
