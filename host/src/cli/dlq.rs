//! `sluice dlq list|stats|replay`: the dead-letter tool's arguments and
//! output (a table for people, one JSON document for scripts).
//!
//! Owns parsing and printing only; reading, filtering, counting and
//! replaying are [`crate::replay`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::replay::{
    self, DlqRecord, Filter, LetterOutcome, ReplayOptions, ReplayResult, ReplayRun, ReplaySummary,
    Stats, Truncation,
};

/// `sluice dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One row per dead letter: where it is, where it came from, why and
    /// when it failed, how often it was replayed.
    List(ListArgs),
    /// Counts by original topic and by error type, the total, and the
    /// oldest and newest failure.
    Stats(CommonArgs),
    /// Produce the selected dead letters back to their original topics,
    /// with the original key, value and headers plus x-replay-count,
    /// x-replayed-at, x-original-dlq-offset and x-original-dlq-partition.
    ///
    /// Only topics a route of the config consumes are written (more with
    /// --allow-topic). A dead letter cut to fit in a record is replayed from
    /// its original record, fetched from its topic, partition and offset;
    /// when that record is gone the letter is refused, never replayed from
    /// the prefix it holds.
    ///
    /// Each run records how far it got as the committed offsets of consumer
    /// group {environment}.{group}.sluice-dlq-replay, one per dead-letter
    /// partition, and a later run skips the dead letters below them as
    /// already replayed. A partition's position moves only over a
    /// contiguous run of dead letters that were replayed or can never be
    /// (unreadable, or cut with their original gone): the first one a run
    /// did not select, refused, skipped over --max-replay-count, left beyond
    /// --limit or failed to replay stops it, so a run with another filter
    /// still finds every dead letter that was never replayed. Letters
    /// replayed after such a stop are replayed again by a later run that
    /// selects them: deal with what stops the position first. A dry run
    /// records nothing.
    ///
    /// Exits 1 if any produce failed or the position could not be recorded.
    Replay(ReplayArgs),
}

/// Where to read and what to select: shared by every `dlq` command.
#[derive(Debug, Args)]
struct CommonArgs {
    /// The daemon's configuration file: it names the brokers and the
    /// dead-letter topics (KAFKA_* variables override it as for `run`).
    #[arg(long, short, default_value = "sluice.toml")]
    config: PathBuf,
    /// Read only this dead-letter topic (default: kafka.dead_letter_topic
    /// and every route's dead_letter_topic).
    #[arg(long, value_name = "NAME")]
    dlq_topic: Option<String>,
    /// Only dead letters from this original topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only this error type: HandlerError, RetriesExhausted, HandlerTimeout,
    /// HandlerTrap, MemoryLimitExceeded, InvalidOutput or UndecodableRecord.
    #[arg(long, value_name = "TYPE")]
    error_type: Option<String>,
    /// Only this correlation id.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// Only failures at or after this time: RFC 3339
    /// (2026-11-27T10:00:00Z) or a duration ago (90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only failures at or before this time: RFC 3339 or a duration ago.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Stop reading a partition that reports no end after this long without
    /// a new record (500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_idle)]
    idle_timeout: Duration,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Show at most this many dead letters (the first, in topic, partition
    /// and offset order).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Print what would be replayed; produce nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most messages produced per second (0: no limit).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100.0)]
    rate_limit: f64,
    /// Do not replay a message already replayed this many times (its own
    /// x-replay-count header); it is reported instead.
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_replay_count: u32,
    /// Replay at most this many dead letters (the first, in topic,
    /// partition and offset order); the rest are left for a later run.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Also replay to this original topic, which no route of the config
    /// consumes (repeatable).
    #[arg(long, value_name = "TOPIC")]
    allow_topic: Vec<String>,
    /// Ignore the replay position: dead letters replayed by earlier runs
    /// are replayed again. The position never moves back.
    #[arg(long)]
    from_beginning: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document with stable field names.
    Json,
}

fn parse_idle(text: &str) -> Result<Duration, String> {
    replay::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration: expected 500ms, 2s, 1m"))
}

/// Runs a `dlq` command.
pub fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List(args) => list(args),
        DlqCommand::Stats(args) => stats(args),
        DlqCommand::Replay(args) => replay_command(args),
    }
}

/// Every dead letter read, and the ones the filters select.
struct Selection {
    config: crate::config::Config,
    /// Every record of the dead-letter topics, in topic, partition and
    /// offset order.
    all: Vec<DlqRecord>,
    filter: Filter,
}

impl Selection {
    /// The selected dead letters, in order.
    fn records(&self) -> Vec<&DlqRecord> {
        self.all.iter().filter(|r| self.filter.matches(r)).collect()
    }
}

/// Checks the filters, loads the config and reads the dead-letter topics.
fn select(common: &CommonArgs) -> anyhow::Result<Selection> {
    // Arguments first: a typo is reported before any broker is contacted.
    let filter = Filter {
        topic: common.topic.clone(),
        error_type: common
            .error_type
            .as_deref()
            .map(replay::parse_error_type)
            .transpose()
            .context("invalid --error-type")?,
        correlation_id: common.correlation_id.clone(),
        since_ms: common
            .since
            .as_deref()
            .map(replay::parse_time)
            .transpose()
            .context("invalid --since")?,
        until_ms: common
            .until
            .as_deref()
            .map(replay::parse_time)
            .transpose()
            .context("invalid --until")?,
    };
    let config = super::load_config(&common.config)?;
    replay::bootstrap(&config)?;
    let topics = replay::dlq_topics(&config, common.dlq_topic.as_deref())?;
    let all = replay::read_dead_letters(&config, &topics, common.idle_timeout)?;
    Ok(Selection {
        config,
        all,
        filter,
    })
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let selection = select(&args.common)?;
    let records = selection.records();
    let filtered_out = selection.all.len() - records.len();
    let shown = &records[..args.limit.unwrap_or(usize::MAX).min(records.len())];
    match args.common.format {
        Format::Json => print_json(&json!({
            "dead_letters": shown.iter().map(|r| letter_json(r)).collect::<Vec<_>>(),
            "matched": records.len(),
            "shown": shown.len(),
            "filtered_out": filtered_out,
        })),
        Format::Table => {
            let rows = shown
                .iter()
                .map(|r| {
                    let mut row = vec![format!(
                        "{}/{}@{}",
                        r.dlq_topic, r.dlq_partition, r.dlq_offset
                    )];
                    match &r.envelope {
                        Ok(e) => row.extend([
                            format!(
                                "{}/{}@{}",
                                e.original_topic, e.original_partition, e.original_offset
                            ),
                            e.error_type.clone(),
                            e.failure_timestamp.clone(),
                            e.correlation_id.clone(),
                            e.replay_count()
                                .map_or_else(|_| "?".to_owned(), |c| c.to_string()),
                            shorten(&cut_mark(&e.truncation, &e.failure_reason), 60),
                        ]),
                        Err(reason) => row.extend([
                            "-".into(),
                            "unreadable".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            shorten(reason, 60),
                        ]),
                    }
                    row
                })
                .collect();
            print_table(
                &[
                    "DLQ RECORD",
                    "ORIGINAL",
                    "ERROR TYPE",
                    "FAILED AT",
                    "CORRELATION ID",
                    "REPLAYS",
                    "REASON",
                ],
                rows,
            );
            println!(
                "{} shown of {} matching ({} filtered out)",
                shown.len(),
                records.len(),
                filtered_out
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(args: CommonArgs) -> anyhow::Result<ExitCode> {
    let selection = select(&args)?;
    let records = selection.records();
    let filtered_out = selection.all.len() - records.len();
    let s = Stats::of(records);
    match args.format {
        Format::Json => print_json(&json!({
            "total": s.total,
            "unreadable": s.unreadable,
            "by_topic": s.by_topic,
            "by_error_type": s.by_error_type,
            "oldest_failure": s.oldest,
            "newest_failure": s.newest,
            "filtered_out": filtered_out,
        })),
        Format::Table => {
            let counts = |title: &str, map: &std::collections::BTreeMap<String, usize>| {
                print_table(
                    &[title, "COUNT"],
                    map.iter()
                        .map(|(k, n)| vec![k.clone(), n.to_string()])
                        .collect(),
                );
                println!();
            };
            counts("ORIGINAL TOPIC", &s.by_topic);
            counts("ERROR TYPE", &s.by_error_type);
            println!("total:          {}", s.total);
            println!("unreadable:     {}", s.unreadable);
            println!("oldest failure: {}", s.oldest.as_deref().unwrap_or("-"));
            println!("newest failure: {}", s.newest.as_deref().unwrap_or("-"));
            println!("filtered out:   {filtered_out}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_command(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !args.rate_limit.is_finite() || args.rate_limit < 0.0 {
        anyhow::bail!(
            "--rate-limit {} is not allowed: a number of messages per second, 0 for no limit",
            args.rate_limit
        );
    }
    let selection = select(&args.common)?;
    let options = ReplayOptions {
        dry_run: args.dry_run,
        rate_limit: args.rate_limit,
        max_replay_count: args.max_replay_count,
        limit: args.limit,
        allowed_topics: args.allow_topic.iter().cloned().collect(),
        from_beginning: args.from_beginning,
    };
    let run = super::tokio_runtime()?.block_on(replay::replay(
        &selection.config,
        &selection.all,
        &selection.filter,
        &options,
    ))?;
    let filtered_out = selection.all.len() - selection.records().len();
    let summary = ReplaySummary::of(&run.results);
    match args.common.format {
        Format::Json => print_json(&replay_json(&run, &summary, args.dry_run, filtered_out)),
        Format::Table => print_replay_table(&run, &summary, args.dry_run, filtered_out),
    }
    if let Some(warning) = &run.position_warning {
        eprintln!("warning: {warning}");
    }
    if let Some(error) = &run.position_error {
        eprintln!(
            "error: the replay position could not be recorded ({error}); a later run would \
             replay these dead letters again"
        );
        return Ok(ExitCode::FAILURE);
    }
    if summary.failed > 0 {
        eprintln!(
            "error: {} of {} replays failed (see the output above)",
            summary.failed,
            run.results.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_json(
    run: &ReplayRun<'_>,
    s: &ReplaySummary,
    dry_run: bool,
    filtered_out: usize,
) -> Value {
    json!({
        "dry_run": dry_run,
        "results": run.results.iter().map(result_json).collect::<Vec<_>>(),
        "summary": {
            "replayed": s.replayed,
            "would_replay": s.would_replay,
            "skipped_over_limit": s.skipped_over_limit,
            "skipped_unreadable": s.skipped_unreadable,
            "skipped_already_replayed": s.skipped_already_replayed,
            "refused_topic": s.refused_topic,
            "refused_original_gone": s.refused_original_gone,
            "failed": s.failed,
            "beyond_limit": run.beyond_limit,
            "filtered_out": filtered_out,
        },
        "position": {
            "group": run.position_group,
            "committed": run.committed.iter().map(|((topic, partition), offset)| {
                let key = (topic.clone(), *partition);
                let beyond = run.recorded_beyond.get(&key).map_or(0, |o| o.len());
                json!({
                    "topic": topic, "partition": partition, "offset": offset,
                    "recorded_beyond": beyond,
                })
            }).collect::<Vec<_>>(),
            "error": run.position_error,
            "warning": run.position_warning,
        },
    })
}

fn print_replay_table(run: &ReplayRun<'_>, s: &ReplaySummary, dry_run: bool, filtered_out: usize) {
    let rows = run
        .results
        .iter()
        .map(|r| {
            let original = r.record.envelope.as_ref().map_or_else(
                |_| "-".to_owned(),
                |e| {
                    format!(
                        "{}/{}@{}",
                        e.original_topic, e.original_partition, e.original_offset
                    )
                },
            );
            vec![
                format!(
                    "{}/{}@{}",
                    r.record.dlq_topic, r.record.dlq_partition, r.record.dlq_offset
                ),
                original,
                r.outcome.name().to_owned(),
                r.outcome.detail(),
            ]
        })
        .collect();
    print_table(&["DLQ RECORD", "ORIGINAL", "OUTCOME", "DETAIL"], rows);
    let first = if dry_run {
        format!("would replay {}", s.would_replay)
    } else {
        format!("replayed {}", s.replayed)
    };
    println!(
        "{first}, skipped over the replay limit {}, skipped unreadable {}, already replayed {}, \
         refused {}, failed {}, beyond --limit {}, filtered out {filtered_out}",
        s.skipped_over_limit,
        s.skipped_unreadable,
        s.skipped_already_replayed,
        s.refused_topic + s.refused_original_gone,
        s.failed,
        run.beyond_limit,
    );
    if !run.committed.is_empty() {
        let at: Vec<String> = run
            .committed
            .iter()
            .map(|((topic, partition), offset)| {
                let key = (topic.clone(), *partition);
                match run.recorded_beyond.get(&key).map_or(0, |o| o.len()) {
                    0 => format!("{topic}/{partition}@{offset}"),
                    n => format!("{topic}/{partition}@{offset} (+{n} replayed past it)"),
                }
            })
            .collect();
        println!(
            "replay position of group {}: {}",
            run.position_group,
            at.join(", ")
        );
    }
}

/// One dead letter as JSON: stable field names, null where unknown.
fn letter_json(r: &DlqRecord) -> Value {
    let mut v = json!({
        "dlq_topic": r.dlq_topic,
        "dlq_partition": r.dlq_partition,
        "dlq_offset": r.dlq_offset,
        "readable": r.envelope.is_ok(),
        "unreadable_reason": r.envelope.as_ref().err(),
        "original_topic": null,
        "original_partition": null,
        "original_offset": null,
        "error_type": null,
        "failure_timestamp": null,
        "correlation_id": null,
        "replay_count": null,
        "retry_count": null,
        "module": null,
        "failure_reason": null,
        "message_complete": null,
        "truncation": null,
    });
    if let Ok(e) = &r.envelope {
        for (field, value) in [
            ("original_topic", json!(e.original_topic)),
            ("original_partition", json!(e.original_partition)),
            ("original_offset", json!(e.original_offset)),
            ("error_type", json!(e.error_type)),
            ("failure_timestamp", json!(e.failure_timestamp)),
            ("correlation_id", json!(e.correlation_id)),
            ("replay_count", json!(e.replay_count().ok())),
            ("retry_count", json!(e.retry_count)),
            ("module", json!(e.module)),
            ("failure_reason", json!(e.failure_reason)),
            ("message_complete", json!(e.truncation.message_complete())),
            ("truncation", truncation_json(&e.truncation)),
        ] {
            v[field] = value;
        }
    }
    v
}

/// The envelope's truncation markers, as written (null when nothing was
/// cut).
fn truncation_json(t: &Truncation) -> Value {
    if !t.any() {
        return Value::Null;
    }
    let cut = |cut: &Option<replay::Cut>, size: &str| {
        cut.as_ref()
            .map(|c| json!({ "truncated": true, size: c.original }))
    };
    json!({
        "key": cut(&t.key, "original_key_size"),
        "value": cut(&t.value, "original_value_size"),
        "headers": cut(&t.headers, "original_header_count"),
        "header_values": t.header_values.iter().map(|(i, c)| json!({
            "index": i, "truncated": true, "original_value_size": c.original,
        })).collect::<Vec<_>>(),
        "failure_reason_truncated": t.failure_reason,
    })
}

/// The failure reason, marked when the dead letter holds only part of the
/// message.
fn cut_mark(t: &Truncation, reason: &str) -> String {
    if t.message_complete() {
        reason.to_owned()
    } else {
        format!("[cut] {reason}")
    }
}

fn result_json(r: &ReplayResult<'_>) -> Value {
    let mut v = letter_json(r.record);
    v["outcome"] = json!(r.outcome.name());
    v["detail"] = json!(r.outcome.detail());
    v["previous_replay_count"] = json!(r.previous_replays);
    let (partition, offset) = match r.outcome {
        LetterOutcome::Replayed { partition, offset } => (Some(partition), Some(offset)),
        _ => (None, None),
    };
    v["replayed_partition"] = json!(partition);
    v["replayed_offset"] = json!(offset);
    v
}

pub(super) fn print_json(value: &Value) {
    // Serialising a Value cannot fail; fall back to compact output anyway.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Prints aligned columns; the last column is not padded.
pub(super) fn print_table(titles: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = titles.iter().map(|t| t.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(titles.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The first line of `text`, at most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    if first.chars().count() <= max && first.len() == text.trim_end().len() {
        return first.to_owned();
    }
    let cut: String = first.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}
