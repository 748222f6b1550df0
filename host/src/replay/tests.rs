//! Decoding dead letters, the filters and the counts over them, and the
//! names of the error types.

use super::*;

fn record(value: &str, headers: &[(&str, &str)]) -> DlqRecord {
    let headers = headers
        .iter()
        .map(|(k, v)| RawHeader {
            key: k.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
        })
        .collect();
    DlqRecord::decode("dlq", 0, 7, headers, Some(value.as_bytes()))
}

fn letter(topic: &str, error_type: &str, at: &str) -> DlqRecord {
    record(
        &serde_json::json!({
            "original_topic": topic,
            "original_message": {"key": "k", "value": "v", "offset": "3", "partition": 0,
                                 "timestamp": null, "headers": []},
            "failure_reason": "r",
            "failure_timestamp": at,
            "correlation_id": format!("c-{topic}"),
            "retry_count": 0,
            "error_type": error_type,
            "module": "m",
            "module_hash": "h",
        })
        .to_string(),
        &[],
    )
}

#[test]
fn a_letter_for_a_record_the_client_could_not_decode_is_never_replayed() {
    let routed: BTreeSet<&str> = ["a"].into_iter().collect();
    let plain = letter("a", "HandlerError", "2026-01-01T00:00:00.000Z");
    assert_eq!(outcome::judge(&plain, None, 3, &routed).1, None);
    let undecodable = letter("a", "UndecodableRecord", "2026-01-01T00:00:00.000Z");
    let (_, refused) = outcome::judge(&undecodable, None, 3, &routed);
    let refused = refused.expect("refused");
    assert_eq!(refused.name(), "skipped_unreadable");
    assert!(
        refused.detail().contains("no content"),
        "{}",
        refused.detail()
    );
    assert!(refused.settles(), "the replay position moves past it");
    assert!(outcome::never_replayable(&undecodable));
}

#[test]
fn filters_select_on_every_field() {
    let a = letter("a", "HandlerError", "2026-01-01T00:00:00.000Z");
    let b = letter("b", "HandlerTrap", "2026-01-02T00:00:00.000Z");
    let t = |s| parse_rfc3339(s).expect("a time");
    let cases = [
        (Filter::default(), true, true),
        (
            Filter {
                topic: Some("a".into()),
                ..Filter::default()
            },
            true,
            false,
        ),
        (
            Filter {
                error_type: Some(ErrorType::HandlerTrap),
                ..Filter::default()
            },
            false,
            true,
        ),
        (
            Filter {
                correlation_id: Some("c-b".into()),
                ..Filter::default()
            },
            false,
            true,
        ),
        (
            Filter {
                since_ms: Some(t("2026-01-01T12:00:00Z")),
                ..Filter::default()
            },
            false,
            true,
        ),
        (
            Filter {
                until_ms: Some(t("2026-01-01T00:00:00Z")),
                ..Filter::default()
            },
            true,
            false,
        ),
    ];
    for (filter, want_a, want_b) in cases {
        assert_eq!(
            (filter.matches(&a), filter.matches(&b)),
            (want_a, want_b),
            "{filter:?}"
        );
    }
}

#[test]
fn unreadable_records_are_judged_on_their_headers() {
    let bare = record("garbage", &[]);
    let tagged = record("garbage", &[("original_topic", "a")]);
    assert!(bare.envelope.is_err());
    assert!(Filter::default().matches(&bare));
    let on_a = Filter {
        topic: Some("a".into()),
        ..Filter::default()
    };
    assert!(!on_a.matches(&bare));
    assert!(on_a.matches(&tagged));
}

#[test]
fn stats_count_by_topic_and_type() {
    let records = [
        letter("a", "HandlerError", "2026-01-02T00:00:00.000Z"),
        letter("a", "HandlerTrap", "2026-01-01T00:00:00.000Z"),
        letter("b", "HandlerError", "2026-01-03T00:00:00.000Z"),
        record("garbage", &[]),
    ];
    let stats = Stats::of(&records);
    assert_eq!((stats.total, stats.unreadable), (4, 1));
    assert_eq!(stats.by_topic["a"], 2);
    assert_eq!(stats.by_error_type["HandlerError"], 2);
    assert_eq!(stats.oldest.as_deref(), Some("2026-01-01T00:00:00.000Z"));
    assert_eq!(stats.newest.as_deref(), Some("2026-01-03T00:00:00.000Z"));
}

#[test]
fn unknown_error_types_name_the_allowed_ones() {
    let error = parse_error_type("Oops").expect_err("unknown").to_string();
    assert!(error.contains("HandlerError") && error.contains("InvalidOutput"));
    assert_eq!(
        parse_error_type("HandlerTimeout").ok(),
        Some(ErrorType::HandlerTimeout)
    );
}
