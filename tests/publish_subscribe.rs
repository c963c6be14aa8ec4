//! Publish → feed round trips, filters, dedupe, streaming publish, history,
//! markings and per-origin order.

use std::collections::HashMap;

use liaison::proto as pb;
use liaison_testkit::*;
use tokio_stream::StreamExt;

#[tokio::test]
async fn published_alert_reaches_a_live_feed_with_origin_from_the_certificate() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    assert!(sub.opened.created);

    let mut post = broker.client(TJ_POST).await;
    let mut a = alert(pb::Category::Drugs, "heroin seized at Ishkashim");
    // A forged origin is ignored: identity comes from the certificate only.
    a.origin = Some(pb::Origin {
        urn: UZ_OFFICE.into(),
        ..Default::default()
    });
    let ack = publish(&mut post, a.clone()).await;
    assert_eq!(ack.id, a.id);
    assert!(!ack.duplicate);

    let d = sub.next().await;
    assert_eq!(d.attempt, 1);
    let record = d.record.expect("record");
    assert_eq!(record.seq, ack.seq);
    let got = record.alert.expect("alert");
    assert_eq!(got.headline, "heroin seized at Ishkashim");
    let origin = got.origin.expect("origin");
    assert_eq!(origin.urn, TJ_POST);
    assert_eq!(
        (
            origin.country.as_str(),
            origin.agency.as_str(),
            origin.node.as_str()
        ),
        ("TJ", "border-guard", "ishkashim")
    );
    sub.ack(&[record.seq]).await;
}

#[tokio::test]
async fn feeds_with_different_filters_get_what_they_asked_for() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let drugs = pb::Filter {
        categories: vec![pb::Category::Drugs as i32, pb::Category::Arms as i32],
        ..Default::default()
    };
    let extreme = pb::Filter {
        min_severity: pb::Severity::Extreme as i32,
        ..Default::default()
    };
    let from_uz = pb::Filter {
        origin_countries: vec!["UZ".into()],
        ..Default::default()
    };
    let exercise = pb::Filter {
        include_exercise: true,
        ..Default::default()
    };
    let mut s_drugs = Subscriber::open(&mut officer, open("drugs", drugs)).await;
    let mut s_extreme = Subscriber::open(&mut officer, open("extreme", extreme)).await;
    let mut s_uz = Subscriber::open(&mut officer, open("uz", from_uz)).await;
    let mut s_ex = Subscriber::open(&mut officer, open("exercise", exercise)).await;

    let mut tj = broker.client(TJ_POST).await;
    let mut uz = broker.client(UZ_OFFICE).await;
    publish(&mut tj, alert(pb::Category::Health, "1 health, severe, TJ")).await;
    let mut ex = alert(pb::Category::Arms, "2 arms, extreme, exercise, TJ");
    ex.status = pb::Status::Exercise as i32;
    ex.severity = pb::Severity::Extreme as i32;
    publish(&mut tj, ex).await;
    let mut test = alert(pb::Category::Drugs, "3 drugs, test, TJ");
    test.status = pb::Status::Test as i32;
    publish(&mut tj, test).await;
    let mut extreme_cbrn = alert(pb::Category::Cbrn, "4 cbrn, extreme, UZ");
    extreme_cbrn.severity = pb::Severity::Extreme as i32;
    publish(&mut uz, extreme_cbrn).await;
    publish(&mut tj, alert(pb::Category::Drugs, "5 drugs, TJ")).await;

    // Each feed's first delivery is the first alert it wants: what came
    // before and did not match was skipped, never delivered.
    assert_eq!(headline_of(&s_drugs.next().await), "5 drugs, TJ");
    assert_eq!(headline_of(&s_extreme.next().await), "4 cbrn, extreme, UZ");
    assert_eq!(headline_of(&s_uz.next().await), "4 cbrn, extreme, UZ");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(headline_of(&s_ex.next().await));
    }
    assert_eq!(
        got,
        [
            "1 health, severe, TJ",
            "2 arms, extreme, exercise, TJ",
            "4 cbrn, extreme, UZ",
            "5 drugs, TJ"
        ]
    );
}

#[tokio::test]
async fn republishing_an_id_returns_the_original_ack_and_stores_nothing() {
    let mut broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let a = alert(pb::Category::Arms, "rifles in a truck");
    let first = publish(&mut post, a.clone()).await;
    let again = publish(&mut post, a.clone()).await;
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.received_at),
        (first.seq, first.received_at)
    );

    // Dedupe is not a time window: it holds across a restart too.
    broker.restart().await;
    let mut post = broker.client(TJ_POST).await;
    let after_restart = publish(&mut post, a).await;
    assert!(after_restart.duplicate);
    assert_eq!(after_restart.seq, first.seq);
    let list = post
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.alerts.len(), 1);
}

#[tokio::test]
async fn another_node_reusing_an_id_is_refused_without_learning_about_the_original() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let mut other = broker.client(UZ_OFFICE).await;
    let a = alert(pb::Category::Drugs, "original");
    publish(&mut post, a.clone()).await;
    let mut copy = alert(pb::Category::Arms, "copy with the same id");
    copy.id = a.id.clone();
    let err = other
        .publish(pb::PublishRequest { alert: Some(copy) })
        .await
        .expect_err("id conflict");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        err.message(),
        "alert.id: already used by another node's alert"
    );
}

#[tokio::test]
async fn streaming_publish_answers_each_alert_in_order_and_survives_a_bad_one() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let mut alerts: Vec<pb::Alert> = (0..300)
        .map(|i| alert(pb::Category::Migration, &format!("group {i} crossing")))
        .collect();
    alerts[150].headline.clear();
    let dup = alerts[10].clone();
    alerts.push(dup);
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    let requests = tokio_stream::iter(
        alerts
            .into_iter()
            .map(|a| pb::PublishRequest { alert: Some(a) }),
    );
    let mut answers = post
        .publish_stream(requests)
        .await
        .expect("stream")
        .into_inner();
    let mut seqs = Vec::new();
    let mut index = 0;
    while let Some(resp) = answers.next().await {
        let resp = resp.expect("answer");
        assert_eq!(resp.index, index);
        match resp.result.expect("result") {
            pb::publish_stream_response::Result::Ack(ack) => {
                assert_eq!(ack.id, ids[index as usize]);
                if index == 300 {
                    assert!(ack.duplicate, "the repeated id is flagged");
                } else {
                    seqs.push(ack.seq);
                }
            }
            pb::publish_stream_response::Result::Error(e) => {
                assert_eq!(index, 150, "only the alert without headline is refused");
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                assert!(e.message.starts_with("alert.headline"), "{}", e.message);
                assert_eq!(e.id, ids[150]);
            }
        }
        index += 1;
    }
    assert_eq!(index, 301);
    assert_eq!(seqs.len(), 299);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequences follow stream order"
    );
}

#[tokio::test]
async fn history_gets_by_id_and_lists_by_filter_and_time_in_pages() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let mut acks = Vec::new();
    for i in 0..25 {
        let cat = if i % 2 == 0 {
            pb::Category::Drugs
        } else {
            pb::Category::Health
        };
        acks.push(publish(&mut post, alert(cat, &format!("alert {i}"))).await);
    }
    let got = post
        .get_alert(pb::GetAlertRequest {
            id: acks[3].id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.seq, acks[3].seq);
    let missing = post
        .get_alert(pb::GetAlertRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = post
        .get_alert(pb::GetAlertRequest { id: "nope".into() })
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Drugs only (13 of 25), 5 per page.
    let mut req = pb::ListAlertsRequest {
        filter: Some(pb::Filter {
            categories: vec![pb::Category::Drugs as i32],
            ..Default::default()
        }),
        page_size: 5,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = post
            .list_alerts(req.clone())
            .await
            .expect("list")
            .into_inner();
        assert!(page.alerts.len() <= 5);
        seen.extend(
            page.alerts
                .iter()
                .map(|r| r.alert.as_ref().expect("alert").headline.clone()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25).step_by(2).map(|i| format!("alert {i}")).collect();
    assert_eq!(seen, expected);

    // A time range: from the 10th alert's receive time up to (excluding) the 20th's.
    let range = post
        .list_alerts(pb::ListAlertsRequest {
            since: acks[10].received_at,
            until: acks[20].received_at,
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let seqs: Vec<u64> = range.alerts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (acks[10].seq..acks[20].seq).collect::<Vec<_>>());
}

#[tokio::test]
async fn markings_bound_who_receives_and_who_can_read_an_alert() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let everything = || open("", pb::Filter::default());
    let mut af = broker.client(AF_OFFICE).await;
    let mut uz = broker.client(UZ_OFFICE).await;
    let mut colleague = broker.client(TJ_POST_2).await;
    let mut customs = broker.client(TJ_CUSTOMS).await;
    let mut s_af = Subscriber::open(&mut af, everything()).await;
    let mut s_uz = Subscriber::open(&mut uz, everything()).await;
    let mut s_colleague = Subscriber::open(&mut colleague, everything()).await;
    let mut s_customs = Subscriber::open(&mut customs, everything()).await;

    let marked = |headline: &str, tlp: pb::Tlp, releasable: &[&str], recipients: &[&str]| {
        let mut a = alert(pb::Category::Terrorism, headline);
        a.marking = Some(pb::Marking {
            tlp: tlp as i32,
            releasable_to: releasable.iter().map(|s| s.to_string()).collect(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            handling_codes: vec![],
        });
        a
    };
    let red = marked("red for AF", pb::Tlp::Red, &[], &[AF_OFFICE]);
    let red_id = red.id.clone();
    publish(&mut post, red).await;
    publish(
        &mut post,
        marked("amber strict", pb::Tlp::AmberStrict, &[], &[]),
    )
    .await;
    publish(
        &mut post,
        marked("amber to UZ", pb::Tlp::Amber, &["UZ"], &[]),
    )
    .await;
    publish(
        &mut post,
        marked("amber to TJ customs", pb::Tlp::Amber, &["TJ:customs"], &[]),
    )
    .await;
    publish(&mut post, marked("clear", pb::Tlp::Clear, &[], &[])).await;

    assert_eq!(headline_of(&s_af.next().await), "red for AF");
    assert_eq!(headline_of(&s_af.next().await), "clear");
    assert_eq!(headline_of(&s_uz.next().await), "amber to UZ");
    assert_eq!(headline_of(&s_uz.next().await), "clear");
    for expected in [
        "amber strict",
        "amber to UZ",
        "amber to TJ customs",
        "clear",
    ] {
        assert_eq!(headline_of(&s_colleague.next().await), expected);
    }
    assert_eq!(headline_of(&s_customs.next().await), "amber to TJ customs");
    assert_eq!(headline_of(&s_customs.next().await), "clear");

    // Reading an alert one is not entitled to looks exactly like a missing id.
    let hidden = uz
        .get_alert(pb::GetAlertRequest { id: red_id.clone() })
        .await
        .expect_err("UZ may not read the RED alert");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    assert_eq!(hidden.message(), "no such alert");
    af.get_alert(pb::GetAlertRequest { id: red_id })
        .await
        .expect("AF is a recipient");
    let uz_history = uz
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let titles: Vec<_> = uz_history
        .alerts
        .iter()
        .map(|r| r.alert.as_ref().expect("alert").headline.as_str())
        .collect();
    assert_eq!(titles, ["amber to UZ", "clear"]);
}

#[tokio::test]
async fn alerts_of_one_origin_arrive_in_publish_order_under_concurrent_publishers() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(
        &mut officer,
        pb::OpenFeed {
            max_in_flight: 1024,
            ..open("order", pb::Filter::default())
        },
    )
    .await;
    let origins = [TJ_POST, TJ_POST_2, UZ_OFFICE, KG_CENTRE];
    const PER_ORIGIN: usize = 150;
    let mut tasks = Vec::new();
    for urn in origins {
        let mut client = broker.client(urn).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_ORIGIN {
                publish(&mut client, alert(pb::Category::Other, &i.to_string())).await;
            }
        }));
    }
    let mut next_expected: HashMap<String, usize> = HashMap::new();
    for _ in 0..origins.len() * PER_ORIGIN {
        let d = sub.next().await;
        let record = d.record.expect("record");
        let a = record.alert.expect("alert");
        let n: usize = a.headline.parse().expect("number");
        let expected = next_expected
            .entry(a.origin.expect("origin").urn)
            .or_default();
        assert_eq!(n, *expected, "per-origin order");
        *expected += 1;
        sub.ack(&[record.seq]).await;
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    assert!(next_expected.values().all(|n| *n == PER_ORIGIN));
}
