//! `sluice offsets show|reset`: the rewind tool's arguments and output (a
//! table for people, one JSON document for scripts).
//!
//! Owns parsing and printing only; reading, planning and committing the
//! group's offsets are [`crate::rewind`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};

use super::dlq::{Format, print_json, print_table};
use crate::config::{Config, OffsetReset};
use crate::rewind::{self, GroupMembers, Move, PartitionState, StartWithout, Target};

/// `sluice offsets`.
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    #[command(subcommand)]
    command: OffsetsCommand,
}

#[derive(Debug, Subcommand)]
enum OffsetsCommand {
    /// The group's committed offset, the first and last offsets and the lag
    /// of every partition of the routed topics, and who is in the group.
    Show(CommonArgs),
    /// Move the group's committed offsets, so that the daemon's next start
    /// reprocesses from there (or skips ahead).
    ///
    /// Refused while the group has live members: stop every daemon of the
    /// group first, or its next commit undoes the move. An offset outside a
    /// partition is brought to its first or last offset, and said so.
    ///
    /// Exits 1 if the group has live members or the broker cannot say.
    Reset(ResetArgs),
}

/// What to read: shared by both commands.
#[derive(Debug, Args)]
struct CommonArgs {
    /// The daemon's configuration file: it names the brokers, the consumer
    /// group ({environment}.{group}) and the routed topics (KAFKA_*
    /// variables override it as for `run`).
    #[arg(long, short, default_value = "sluice.toml")]
    config: PathBuf,
    /// Only this routed topic (default: every topic a route consumes).
    #[arg(long)]
    topic: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(
    ["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"]
)))]
struct ResetArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// To the first offset still on the broker: reprocess everything kept.
    #[arg(long)]
    to_earliest: bool,
    /// To the end of each partition: skip everything not yet handled.
    #[arg(long)]
    to_latest: bool,
    /// To this offset on every partition selected.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// To the first record at or after this time: RFC 3339
    /// (2026-11-27T10:00:00Z, 2026-11-27T11:00:00+01:00) or a duration ago
    /// (90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
    /// Move the committed offset by N records (negative: back, to
    /// reprocess). A partition with none starts where the daemon would
    /// (kafka.auto_offset_reset).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// Print the moves; commit nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs an `offsets` command.
pub fn offsets(args: OffsetsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        OffsetsCommand::Show(args) => show(args),
        OffsetsCommand::Reset(args) => reset(args),
    }
}

/// The config, the partitions selected and where they stand.
fn read(common: &CommonArgs) -> anyhow::Result<(Config, Vec<PartitionState>)> {
    let config = super::load_config(&common.config)?;
    let topics = rewind::topics(&config, common.topic.as_deref())?;
    let states = rewind::partition_states(&config, &topics)?;
    Ok((config, states))
}

fn show(args: CommonArgs) -> anyhow::Result<ExitCode> {
    let (config, states) = read(&args)?;
    let members = rewind::describe_group(&config);
    match args.format {
        Format::Json => print_json(&json!({
            "group": config.group_id(),
            "members": members_json(&members),
            "partitions": states.iter().map(|s| json!({
                "topic": s.topic,
                "partition": s.partition,
                "committed": s.committed,
                "earliest": s.earliest,
                "latest": s.latest,
                "lag": s.lag(),
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let rows = states
                .iter()
                .map(|s| {
                    vec![
                        s.topic.clone(),
                        s.partition.to_string(),
                        dash(s.committed),
                        s.earliest.to_string(),
                        s.latest.to_string(),
                        dash(s.lag()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TOPIC",
                    "PARTITION",
                    "COMMITTED",
                    "EARLIEST",
                    "LATEST",
                    "LAG",
                ],
                rows,
            );
            println!(
                "consumer group {}: {}",
                config.group_id(),
                members_line(&members)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reset(args: ResetArgs) -> anyhow::Result<ExitCode> {
    // Arguments first: a typo is reported before any broker is contacted.
    let target = target(&args)?;
    let (config, states) = read(&args.common)?;
    let members = rewind::describe_group(&config);
    if !args.dry_run {
        match &members {
            Ok(m) => m.ensure_empty()?,
            Err(e) => anyhow::bail!("{e}"),
        }
    }
    let by_time = match target {
        Target::Time(ms) => rewind::times_to_offsets(&config, &states, ms)?,
        _ => vec![None; states.len()],
    };
    let start_without = match config.kafka.auto_offset_reset {
        OffsetReset::Earliest => StartWithout::Earliest,
        OffsetReset::Latest => StartWithout::Latest,
    };
    let moves: Vec<Move> = states
        .iter()
        .zip(by_time)
        .map(|(s, t)| rewind::plan(s, target, t, start_without))
        .collect();
    let committed = if args.dry_run {
        None
    } else {
        Some(rewind::commit(&config, &moves)?)
    };
    match args.common.format {
        Format::Json => print_json(&reset_json(&config, &members, &moves, committed.as_deref())),
        Format::Table => print_reset_table(&config, &members, &moves, committed.as_deref()),
    }
    let missed = committed
        .iter()
        .flat_map(|c| moves.iter().zip(c))
        .filter(|(m, c)| **c != Some(m.to))
        .count();
    if missed > 0 {
        eprintln!(
            "error: the broker holds a different offset than committed for {missed} \
             partition(s) (see above): a consumer of the group may have committed meanwhile"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The one target option given (clap makes sure there is exactly one).
fn target(args: &ResetArgs) -> anyhow::Result<Target> {
    if let Some(text) = &args.to_datetime {
        let ms = crate::replay::parse_time(text).context("invalid --to-datetime")?;
        return Ok(Target::Time(ms));
    }
    if let Some(n) = args.to_offset {
        anyhow::ensure!(
            n >= 0,
            "--to-offset {n} is not allowed: an offset is 0 or more (use --shift-by to move back)"
        );
        return Ok(Target::Offset(n));
    }
    Ok(match (args.to_earliest, args.to_latest, args.shift_by) {
        (true, _, _) => Target::Earliest,
        (_, true, _) => Target::Latest,
        (_, _, Some(n)) => Target::ShiftBy(n),
        _ => anyhow::bail!(
            "say where to move the offsets: --to-earliest, --to-latest, --to-offset N, \
             --to-datetime TIME or --shift-by N"
        ),
    })
}

fn reset_json(
    config: &Config,
    members: &Result<GroupMembers, rewind::RewindError>,
    moves: &[Move],
    committed: Option<&[Option<i64>]>,
) -> Value {
    json!({
        "group": config.group_id(),
        "dry_run": committed.is_none(),
        "members": members_json(members),
        "partitions": moves.iter().enumerate().map(|(i, m)| json!({
            "topic": m.state.topic,
            "partition": m.state.partition,
            "from": m.state.committed,
            "to": m.to,
            "earliest": m.state.earliest,
            "latest": m.state.latest,
            "adjusted": m.adjusted.map(|a| a.name()),
            "committed": committed.map(|c| c[i]),
        })).collect::<Vec<_>>(),
    })
}

fn print_reset_table(
    config: &Config,
    members: &Result<GroupMembers, rewind::RewindError>,
    moves: &[Move],
    committed: Option<&[Option<i64>]>,
) {
    let rows = moves
        .iter()
        .map(|m| {
            vec![
                m.state.topic.clone(),
                m.state.partition.to_string(),
                dash(m.state.committed),
                m.to.to_string(),
                m.adjusted.map_or("", |a| a.describe()).to_owned(),
            ]
        })
        .collect();
    print_table(&["TOPIC", "PARTITION", "FROM", "TO", "NOTE"], rows);
    let group = config.group_id();
    match committed {
        None => {
            println!("dry run: nothing committed");
            println!("consumer group {group}: {}", members_line(members));
        }
        Some(_) => println!("committed the new offsets of consumer group {group}"),
    }
}

fn members_json(members: &Result<GroupMembers, rewind::RewindError>) -> Value {
    match members {
        Ok(m) => json!({ "state": m.state, "live": m.members, "error": null }),
        Err(e) => json!({ "state": null, "live": null, "error": e.to_string() }),
    }
}

/// Who is in the group, for people.
fn members_line(members: &Result<GroupMembers, rewind::RewindError>) -> String {
    match members {
        Ok(m) if m.members.is_empty() => "no live members".to_owned(),
        Ok(m) => format!(
            "{} live member(s) ({}); a reset is refused until they stop",
            m.members.len(),
            m.members.join(", ")
        ),
        Err(e) => format!("members unknown: {e}"),
    }
}

/// A number, or `-` when there is none.
fn dash(n: Option<i64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}
