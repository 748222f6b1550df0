use super::*;

fn status(stall_timeout_seconds: f64) -> Arc<Status> {
    let text = format!(
        "[kafka]\n[processing]\nstall_timeout_seconds = {stall_timeout_seconds:?}\n\
         [[routes]]\ntopic = \"in\"\nmodule = \"m\"\n"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins directory");
    std::fs::write(dir.path().join("plugins/m.wasm"), b"").expect("module file");
    let config = Config::parse(&text, dir.path(), &|_| None).expect("config");
    Status::new(&config)
}

fn lag(n: i64) -> BTreeMap<TopicPartition, i64> {
    BTreeMap::from([(TopicPartition::new("in", 0), n)])
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn holding_no_partition_past_the_session_timeout_is_said() {
    // librdkafka's default session timeout: 45 s.
    let s = status(60.0);
    let t0 = Instant::now();
    let session = Duration::from_secs(45);
    assert_eq!(s.assigned(), 0);
    assert_eq!(s.unassigned_for(t0 + session / 2), None, "not yet");
    assert!(
        s.unassigned_for(t0 + session + MINUTE).is_some(),
        "since start"
    );
    s.set_assigned(3, t0 + MINUTE);
    assert_eq!(s.assigned(), 3);
    assert_eq!(s.unassigned_for(t0 + 10 * MINUTE), None, "it holds some");
    // Losing them all starts the count again.
    s.set_assigned(0, t0 + 2 * MINUTE);
    assert_eq!(s.unassigned_for(t0 + 2 * MINUTE + session / 2), None);
    assert_eq!(
        s.unassigned_for(t0 + 3 * MINUTE),
        Some(MINUTE),
        "counted from the rebalance that took the last one"
    );
}

#[test]
fn a_lag_that_stands_still_past_the_timeout_is_a_stall() {
    let s = status(60.0);
    let t0 = Instant::now();
    s.set_lag(lag(5), t0);
    s.set_lag(lag(5), t0 + MINUTE / 2);
    assert!(s.stalled_at(t0 + MINUTE / 2).is_empty(), "not yet");
    let stalled = s.stalled_at(t0 + MINUTE);
    assert_eq!(
        stalled,
        [Stalled {
            partition: TopicPartition::new("in", 0),
            lag: 5,
            for_: MINUTE,
        }]
    );
}

#[test]
fn a_moving_or_empty_lag_is_no_stall() {
    let s = status(60.0);
    let t0 = Instant::now();
    s.set_lag(lag(5), t0);
    s.set_lag(lag(4), t0 + MINUTE);
    assert!(
        s.stalled_at(t0 + MINUTE + MINUTE / 2).is_empty(),
        "it moved"
    );
    s.set_lag(lag(0), t0 + 3 * MINUTE);
    s.set_lag(lag(0), t0 + 5 * MINUTE);
    assert!(
        s.stalled_at(t0 + 5 * MINUTE).is_empty(),
        "nothing to consume"
    );
}

#[test]
fn paused_held_or_stopped_partitions_are_not_stalled() {
    let s = status(60.0);
    let t0 = Instant::now();
    let tp = TopicPartition::new("in", 0);
    s.set_lag(lag(5), t0);
    let later = t0 + 2 * MINUTE;
    assert_eq!(s.stalled_at(later).len(), 1);

    let flags = PartitionFlags::default();
    s.in_flight
        .lock()
        .expect("the lock is not poisoned")
        .insert(tp.clone(), flags.clone());
    flags.paused.store(true, Ordering::Relaxed);
    assert!(s.stalled_at(later).is_empty(), "paused for a full queue");
    flags.paused.store(false, Ordering::Relaxed);

    s.stop(&tp, "offset 3: HandlerError: no".into());
    assert!(s.stalled_at(later).is_empty(), "stopped, and said so");
    s.resume(&tp);

    let breaker = s.route_breaker("in").expect("the route's breaker");
    breaker.set_limits(1, MINUTE);
    breaker.admission().report(false);
    assert!(
        s.stalled_at(later).is_empty(),
        "held by the open handler breaker"
    );
    breaker.reset();
    assert_eq!(s.stalled_at(later).len(), 1);
}

#[test]
fn a_zero_timeout_never_reports_a_stall() {
    let s = status(0.0);
    let t0 = Instant::now();
    s.set_lag(lag(5), t0);
    assert!(s.stalled_at(t0 + 1000 * MINUTE).is_empty());
}
