//! `flatpack dead-letters`: list a dead-letter topic's messages with their `dlq.*` headers,
//! show one, and replay chosen ones to their source topic, exactly once.
//!
//! A replay writes each chosen message to the topic its `dlq.topic` header names (same key,
//! the payload as it was or the fixed one from a file, plus a `dlq.replayed-from` header),
//! and, in the same Kafka transaction, a record of it on the compacted topic
//! `<dead-letter topic>.replayed`, keyed by `<dead-letter topic>/<partition>/<offset>`. The
//! replay reads that topic (`read_committed`) after its producer fenced any earlier replay
//! of the same dead-letter topic, and skips what is recorded there: a message is replayed
//! once however often, and however concurrently, it is asked for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::ArgGroup;
use common::KafkaSettings;
use common::kafka::dead_letter::dlq_headers;
use common::kafka::exactly_once::{commit, send};
use common::kafka::read::{Start, assign_all, read_to_end};
use common::kafka::{FlatpackContext, ensure_topics, reader_to_end, transactional_producer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};

/// How long one call to the broker (metadata, reading to the end, a transaction step) may
/// take before the command gives up, saying what it was doing.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The client id the command's Kafka clients show in the broker's logs.
const CLIENT: &str = "flatpack-cli";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Lists the messages of a dead-letter topic, one line each: where it is, when it was
    /// written, its key, whether it was replayed, where it came from, which service refused
    /// it and why.
    List {
        /// The dead-letter topic's name on the broker, with any prefix (`order_details.dlq`).
        topic: String,
        /// One JSON array, an object per message, with every header.
        #[arg(long)]
        json: bool,
    },
    /// Shows one message: its headers and its payload (pretty-printed when it is JSON).
    Show {
        /// The dead-letter topic's name on the broker.
        topic: String,
        /// Which message: `PARTITION:OFFSET` in the dead-letter topic, as `list` shows it.
        #[arg(value_name = "P:O")]
        position: Position,
        /// Only the payload (pretty JSON when it is JSON): a file to fix and replay with
        /// `replay --payload-file`.
        #[arg(long)]
        payload: bool,
    },
    /// Replays messages to their source topic (their `dlq.topic` header), exactly once:
    /// a message already replayed is skipped, and the command says so.
    Replay(ReplayArgs),
}

/// Which messages to replay, and with which payload.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["all", "offset", "from"])))]
pub struct ReplayArgs {
    /// The dead-letter topic's name on the broker.
    topic: String,
    /// Every message of the topic (those replayed before are skipped).
    #[arg(long)]
    all: bool,
    /// One message, `PARTITION:OFFSET`.
    #[arg(long, value_name = "P:O")]
    offset: Option<Position>,
    /// The first message of a range in one partition, `PARTITION:OFFSET` (with `--to`).
    #[arg(long, value_name = "P:O", requires = "to")]
    from: Option<Position>,
    /// The last message of the range, included, in the same partition as `--from`.
    #[arg(long, value_name = "P:O", requires = "from")]
    to: Option<Position>,
    /// Replays the one chosen message with this file's content (JSON) as its payload: the
    /// message fixed.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
}

/// Runs one `dead-letters` command.
pub fn run(command: Command, settings: &KafkaSettings, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::List { topic, json } => list(settings, &topic, json, out),
        Command::Show {
            topic,
            position,
            payload,
        } => show(settings, &topic, position, payload, out),
        Command::Replay(args) => replay(settings, &args, out),
    }
}

/// Where a message is in its topic: `PARTITION:OFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for Position {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not PARTITION:OFFSET (e.g. 0:17)");
        let (partition, offset) = text.trim().split_once(':').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Self { partition, offset })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// A message of a dead-letter topic, as read.
#[derive(Debug, Clone)]
struct Letter {
    position: Position,
    /// When it was written, milliseconds since the epoch.
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// Every header in order, values as bytes.
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn read(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            position: Position {
                partition: message.partition(),
                offset: message.offset(),
            },
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The last value of header `name`, as text.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// Header `name` as a number; `None` when it is missing or not one (the headers, as they
    /// are, are listed too).
    fn number(&self, name: &str) -> Option<i64> {
        self.header(name).and_then(|value| value.parse().ok())
    }

    fn key_text(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
    }

    fn timestamp(&self) -> Option<String> {
        self.timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// Where the message came from: `topic/partition/offset` from its `dlq.*` headers.
    fn origin(&self) -> String {
        let part = |name| self.header(name).unwrap_or_else(|| "?".into());
        format!(
            "{}/{}/{}",
            part(dlq_headers::TOPIC),
            part(dlq_headers::PARTITION),
            part(dlq_headers::OFFSET)
        )
    }
}

/// The key of a dead letter's record on the replayed topic: `<topic>/<partition>/<offset>`.
fn replay_key(topic: &str, position: Position) -> String {
    format!("{topic}/{}/{}", position.partition, position.offset)
}

/// A dead-letter topic read to its end.
#[derive(Debug)]
struct DeadLetters {
    topic: String,
    partitions: Vec<i32>,
    /// In partition and offset order.
    letters: Vec<Letter>,
}

impl DeadLetters {
    fn read(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        let consumer = reader(settings)?;
        if !topic_exists(&consumer, settings, topic)? {
            bail!(
                "unknown topic {topic}: the broker at {} has no such topic",
                settings.bootstrap_servers
            );
        }
        let partitions = assign_all(&consumer, topic, Start::Beginning, TIMEOUT)?;
        let mut letters = Vec::new();
        read_to_end(&consumer, topic, &partitions, TIMEOUT, |message| {
            letters.push(Letter::read(message));
        })?;
        letters.sort_by_key(|letter| letter.position);
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            letters,
        })
    }

    /// The message at `position`, or an error saying what the topic holds instead.
    fn at(&self, position: Position) -> anyhow::Result<&Letter> {
        self.check_partition(position.partition)?;
        if let Some(letter) = self.letters.iter().find(|l| l.position == position) {
            return Ok(letter);
        }
        bail!(
            "{} has no message at {position} ({})",
            self.topic,
            self.holds(position.partition)
        )
    }

    fn check_partition(&self, partition: i32) -> anyhow::Result<()> {
        if self.partitions.contains(&partition) {
            return Ok(());
        }
        let partitions: Vec<String> = self.partitions.iter().map(i32::to_string).collect();
        bail!(
            "{} has no partition {partition} (its partitions: {})",
            self.topic,
            partitions.join(", ")
        )
    }

    /// What partition `partition` holds, for error messages.
    fn holds(&self, partition: i32) -> String {
        let offsets: Vec<i64> = self
            .letters
            .iter()
            .filter(|l| l.position.partition == partition)
            .map(|l| l.position.offset)
            .collect();
        match (offsets.first(), offsets.last()) {
            (Some(first), Some(last)) => {
                format!("partition {partition} holds offsets {first} to {last}")
            }
            _ => format!("partition {partition} holds no messages"),
        }
    }

    /// The messages `args` choose, in partition and offset order.
    fn choose(&self, args: &ReplayArgs) -> anyhow::Result<Vec<&Letter>> {
        if args.all {
            return Ok(self.letters.iter().collect());
        }
        if let Some(position) = args.offset {
            return Ok(vec![self.at(position)?]);
        }
        let (Some(from), Some(to)) = (args.from, args.to) else {
            bail!("choose the messages to replay: --all, --offset P:O, or --from P:O --to P:O");
        };
        if from.partition != to.partition {
            bail!("--from {from} and --to {to} must be in the same partition");
        }
        if from.offset > to.offset {
            bail!("--from {from} comes after --to {to}");
        }
        self.check_partition(from.partition)?;
        let chosen: Vec<&Letter> = self
            .letters
            .iter()
            .filter(|l| l.position >= from && l.position <= to)
            .collect();
        if chosen.is_empty() {
            bail!(
                "{} has no message from {from} to {to} ({})",
                self.topic,
                self.holds(from.partition)
            );
        }
        Ok(chosen)
    }
}

/// A consumer for reading topics to their end, outside any group's commits.
fn reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    reader_to_end(
        settings,
        CLIENT,
        &settings.topics().scoped(CLIENT),
        Duration::from_millis(50),
    )
}

/// Whether the broker knows `topic`.
fn topic_exists(
    consumer: &BaseConsumer<FlatpackContext>,
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<bool> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| {
            format!(
                "asking the broker at {} about topic {topic}",
                settings.bootstrap_servers
            )
        })?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// What the replayed topic says was replayed: its record per dead letter, by key.
fn read_replayed(settings: &KafkaSettings, topic: &str) -> anyhow::Result<HashMap<String, Value>> {
    let consumer = reader(settings)?;
    let mut replayed = HashMap::new();
    if !topic_exists(&consumer, settings, topic)? {
        return Ok(replayed);
    }
    let partitions = assign_all(&consumer, topic, Start::Beginning, TIMEOUT)?;
    read_to_end(&consumer, topic, &partitions, TIMEOUT, |message| {
        let Some(key) = message.key() else { return };
        let key = String::from_utf8_lossy(key).into_owned();
        match message.payload() {
            // A record that does not decode still says the message was replayed.
            Some(payload) => {
                let record = serde_json::from_slice(payload).unwrap_or(Value::Null);
                replayed.insert(key, record);
            }
            None => {
                replayed.remove(&key);
            }
        }
    })
    .with_context(|| format!("reading what was replayed from {topic}"))?;
    Ok(replayed)
}

fn list(
    settings: &KafkaSettings,
    topic: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dead = DeadLetters::read(settings, topic)?;
    let replayed = read_replayed(settings, &settings.topics().replayed(topic))?;
    if as_json {
        let entries: Vec<Value> = dead
            .letters
            .iter()
            .map(|letter| {
                let headers: BTreeMap<&str, Option<String>> = letter
                    .headers
                    .iter()
                    .map(|(key, value)| {
                        (
                            key.as_str(),
                            value
                                .as_deref()
                                .map(|v| String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                json!({
                    "partition": letter.position.partition,
                    "offset": letter.position.offset,
                    "timestamp": letter.timestamp(),
                    "key": letter.key_text(),
                    "error": letter.header(dlq_headers::ERROR),
                    "service": letter.header(dlq_headers::SERVICE),
                    "source": {
                        "topic": letter.header(dlq_headers::TOPIC),
                        "partition": letter.number(dlq_headers::PARTITION),
                        "offset": letter.number(dlq_headers::OFFSET),
                    },
                    "replayed": replayed.get(&replay_key(topic, letter.position)),
                    "headers": headers,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut replayed_count = 0;
    for letter in &dead.letters {
        let was_replayed = replayed.contains_key(&replay_key(topic, letter.position));
        replayed_count += usize::from(was_replayed);
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{}  {}  key={}  replayed={}  from={}  service={}  error={}",
            letter.position,
            or_dash(letter.timestamp()),
            or_dash(letter.key_text()),
            if was_replayed { "yes" } else { "no" },
            letter.origin(),
            or_dash(letter.header(dlq_headers::SERVICE)),
            or_dash(letter.header(dlq_headers::ERROR)),
        )?;
    }
    let count = dead.letters.len();
    let noun = if count == 1 {
        "dead letter"
    } else {
        "dead letters"
    };
    writeln!(out, "{count} {noun} in {topic}, {replayed_count} replayed")?;
    Ok(())
}

fn show(
    settings: &KafkaSettings,
    topic: &str,
    position: Position,
    payload_only: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dead = DeadLetters::read(settings, topic)?;
    let letter = dead.at(position)?;
    let payload = letter.payload.as_deref().map(pretty);
    if payload_only {
        match payload {
            Some((text, _)) => writeln!(out, "{text}")?,
            None => bail!("{topic} {position} has no payload"),
        }
        return Ok(());
    }
    let replayed = read_replayed(settings, &settings.topics().replayed(topic))?;
    writeln!(out, "topic:     {topic}")?;
    writeln!(out, "position:  {position}")?;
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    writeln!(out, "timestamp: {}", or_dash(letter.timestamp()))?;
    writeln!(out, "key:       {}", or_dash(letter.key_text()))?;
    match replayed.get(&replay_key(topic, position)) {
        Some(record) => writeln!(out, "replayed:  yes {record}")?,
        None => writeln!(out, "replayed:  no")?,
    }
    writeln!(out, "headers:")?;
    for (key, value) in &letter.headers {
        let value = value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        writeln!(out, "  {key}: {}", or_dash(value))?;
    }
    match payload {
        Some((text, true)) => writeln!(out, "payload (JSON):\n{text}")?,
        Some((text, false)) => writeln!(
            out,
            "payload (not JSON, {} bytes):\n{text}",
            letter.payload.as_ref().map_or(0, Vec::len)
        )?,
        None => writeln!(out, "payload:   none")?,
    }
    Ok(())
}

/// The payload as text: pretty JSON (`true`) when it is JSON, else as it is.
fn pretty(payload: &[u8]) -> (String, bool) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => match serde_json::to_string_pretty(&value) {
            Ok(text) => (text, true),
            Err(_) => (String::from_utf8_lossy(payload).into_owned(), false),
        },
        Err(_) => (String::from_utf8_lossy(payload).into_owned(), false),
    }
}

/// The fixed payload from `path`: its content as it is, once it proved to be JSON.
fn fixed_payload(path: &Path) -> anyhow::Result<Vec<u8>> {
    let content = std::fs::read(path)
        .with_context(|| format!("reading the payload file {}", path.display()))?;
    if let Err(err) = serde_json::from_slice::<Value>(&content) {
        bail!("the payload file {} is not JSON: {err}", path.display());
    }
    Ok(content.trim_ascii().to_vec())
}

/// One message on its way back to its source.
#[derive(Debug)]
struct Replay<'a> {
    letter: &'a Letter,
    to_topic: String,
    payload: Option<&'a [u8]>,
    replaced: bool,
}

fn replay(settings: &KafkaSettings, args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topic = args.topic.as_str();
    // Everything that can be wrong with the request is found before anything is written.
    let fixed = args
        .payload_file
        .as_deref()
        .map(fixed_payload)
        .transpose()?;
    let dead = DeadLetters::read(settings, topic)?;
    let chosen = dead.choose(args)?;
    if fixed.is_some() && chosen.len() != 1 {
        bail!(
            "--payload-file replaces the payload of one message, but {} are chosen; choose one with --offset P:O",
            chosen.len()
        );
    }
    if chosen.is_empty() {
        writeln!(out, "nothing to replay: {topic} holds no messages")?;
        return Ok(());
    }
    let mut replays = Vec::with_capacity(chosen.len());
    for letter in chosen {
        let Some(to_topic) = letter.header(dlq_headers::TOPIC) else {
            bail!(
                "{topic} {} has no {} header: its source topic is unknown, so it cannot be replayed",
                letter.position,
                dlq_headers::TOPIC
            );
        };
        replays.push(Replay {
            letter,
            to_topic,
            payload: fixed.as_deref().or(letter.payload.as_deref()),
            replaced: fixed.is_some(),
        });
    }
    let consumer = reader(settings)?;
    let sources: BTreeSet<&str> = replays.iter().map(|r| r.to_topic.as_str()).collect();
    for source in sources {
        if !topic_exists(&consumer, settings, source)? {
            bail!(
                "unknown topic {source} (the {} header of messages in {topic}): the broker at {} has no such topic",
                dlq_headers::TOPIC,
                settings.bootstrap_servers
            );
        }
    }

    let replayed_topic = settings.topics().replayed(topic);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for creating topics")?
        .block_on(ensure_topics(
            settings,
            std::slice::from_ref(&replayed_topic),
        ))?;
    // One transactional id per dead-letter topic: initialising it fences any replay of the
    // same topic still running and settles its open transaction, so what the replayed topic
    // says after this is all that was and will be replayed before us.
    let producer = transactional_producer(
        settings,
        CLIENT,
        &format!("flatpack-replay.{topic}"),
        TIMEOUT * 2,
    )?;
    producer
        .init_transactions(TIMEOUT)
        .context("starting the replay's Kafka transactions")?;
    let done = read_replayed(settings, &replayed_topic)?;
    let (already, todo): (Vec<Replay<'_>>, Vec<Replay<'_>>) = replays
        .into_iter()
        .partition(|r| done.contains_key(&replay_key(topic, r.letter.position)));
    for skipped in &already {
        let record = &done[&replay_key(topic, skipped.letter.position)];
        writeln!(
            out,
            "already replayed {topic} {} (to {}, at {}): not replayed again",
            skipped.letter.position,
            record["to_topic"].as_str().unwrap_or("?"),
            record["replayed_at"].as_str().unwrap_or("?"),
        )?;
    }
    if !todo.is_empty() {
        producer
            .begin_transaction()
            .context("beginning the replay's transaction")?;
        if let Err(err) = write_replays(&producer, topic, &replayed_topic, &todo) {
            if fenced(&err) {
                return Err(err.context(format!(
                    "replaying: another replay of {topic} started meanwhile and took over; \
                     its start aborted this one's transaction, nothing was replayed by this one"
                )));
            }
            // Replaying again is always safe: what did get replayed is skipped then.
            return Err(match producer.abort_transaction(TIMEOUT) {
                Ok(()) => err.context("replaying: the transaction was aborted, nothing was replayed"),
                Err(abort) => err.context(format!(
                    "replaying: whether anything was replayed is unknown (aborting failed: {abort}); \
                     `flatpack dead-letters list {topic}` shows it, and replaying again is safe"
                )),
            });
        }
    }
    for replay in &todo {
        writeln!(
            out,
            "replayed {topic} {} to {}{}",
            replay.letter.position,
            replay.to_topic,
            if replay.replaced {
                " with the payload from the file"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        out,
        "{} replayed, {} already replayed before",
        todo.len(),
        already.len()
    )?;
    Ok(())
}

/// Whether `err` says that a newer producer with the same transactional id fenced ours.
fn fenced(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<KafkaError>())
        .any(|cause| {
            matches!(
                cause.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
            )
        })
}

/// Writes `replays` to their sources and their records to `replayed_topic`, and commits.
fn write_replays(
    producer: &BaseProducer<FlatpackContext>,
    topic: &str,
    replayed_topic: &str,
    replays: &[Replay<'_>],
) -> anyhow::Result<()> {
    let replayed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    for replay in replays {
        let letter = replay.letter;
        let from = replay_key(topic, letter.position);
        // The message's own headers (a trace context, ...) go along; why it was
        // dead-lettered stays behind, and where it was replayed from is added.
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
        {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        headers = headers.insert(Header {
            key: dlq_headers::REPLAYED_FROM,
            value: Some(from.as_str()),
        });
        let mut record = BaseRecord::<[u8], [u8]>::to(&replay.to_topic).headers(headers);
        if let Some(key) = letter.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = replay.payload {
            record = record.payload(payload);
        }
        send(producer, record).with_context(|| {
            format!("writing {topic} {} to {}", letter.position, replay.to_topic)
        })?;
        let what = json!({
            "replayed_at": replayed_at,
            "from_topic": topic,
            "from_partition": letter.position.partition,
            "from_offset": letter.position.offset,
            "to_topic": replay.to_topic,
            "payload_replaced": replay.replaced,
            "error": letter.header(dlq_headers::ERROR),
        })
        .to_string();
        send(
            producer,
            BaseRecord::to(replayed_topic)
                .key(from.as_bytes())
                .payload(what.as_bytes()),
        )
        .with_context(|| format!("recording the replay of {from} on {replayed_topic}"))?;
    }
    commit(producer).context("committing the replay's transaction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_partition_colon_offset() {
        assert_eq!(
            "2:17".parse::<Position>(),
            Ok(Position {
                partition: 2,
                offset: 17
            })
        );
        assert_eq!(
            Position::from_str("2:17").map(|p| p.to_string()),
            Ok("2:17".into())
        );
        for bad in ["", "2", "2:", ":17", "a:1", "1:b", "-1:0", "0:-3", "1:2:3"] {
            let err = bad.parse::<Position>().unwrap_err();
            assert!(err.contains("is not PARTITION:OFFSET"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_replayed_record_is_keyed_by_topic_partition_and_offset() {
        let position = Position {
            partition: 1,
            offset: 4,
        };
        assert_eq!(
            replay_key("t1_order_details.dlq", position),
            "t1_order_details.dlq/1/4"
        );
    }

    fn letter(partition: i32, offset: i64) -> Letter {
        Letter {
            position: Position { partition, offset },
            timestamp_ms: Some(0),
            key: None,
            payload: Some(b"{}".to_vec()),
            headers: vec![(dlq_headers::TOPIC.into(), Some(b"order_details".to_vec()))],
        }
    }

    fn topic() -> DeadLetters {
        DeadLetters {
            topic: "order_details.dlq".into(),
            partitions: vec![0, 1, 2],
            letters: vec![letter(0, 0), letter(0, 1), letter(0, 4), letter(2, 7)],
        }
    }

    fn args(all: bool, offset: Option<&str>, from: Option<&str>, to: Option<&str>) -> ReplayArgs {
        let position = |p: Option<&str>| p.map(|p| p.parse::<Position>().unwrap());
        ReplayArgs {
            topic: "order_details.dlq".into(),
            all,
            offset: position(offset),
            from: position(from),
            to: position(to),
            payload_file: None,
        }
    }

    fn chosen(args: &ReplayArgs) -> Result<Vec<String>, String> {
        let topic = topic();
        topic
            .choose(args)
            .map(|letters| letters.iter().map(|l| l.position.to_string()).collect())
            .map_err(|err| err.to_string())
    }

    #[test]
    fn replay_chooses_all_one_or_a_range_of_one_partition() {
        assert_eq!(
            chosen(&args(true, None, None, None)).unwrap(),
            ["0:0", "0:1", "0:4", "2:7"]
        );
        assert_eq!(
            chosen(&args(false, Some("0:4"), None, None)).unwrap(),
            ["0:4"]
        );
        assert_eq!(
            chosen(&args(false, None, Some("0:1"), Some("0:9"))).unwrap(),
            ["0:1", "0:4"]
        );
        assert_eq!(
            chosen(&args(false, None, Some("2:7"), Some("2:7"))).unwrap(),
            ["2:7"]
        );
    }

    #[test]
    fn replay_names_what_the_topic_does_not_hold() {
        assert_eq!(
            chosen(&args(false, Some("0:2"), None, None)).unwrap_err(),
            "order_details.dlq has no message at 0:2 (partition 0 holds offsets 0 to 4)"
        );
        assert_eq!(
            chosen(&args(false, Some("1:0"), None, None)).unwrap_err(),
            "order_details.dlq has no message at 1:0 (partition 1 holds no messages)"
        );
        assert_eq!(
            chosen(&args(false, Some("3:0"), None, None)).unwrap_err(),
            "order_details.dlq has no partition 3 (its partitions: 0, 1, 2)"
        );
        assert_eq!(
            chosen(&args(false, None, Some("2:0"), Some("2:6"))).unwrap_err(),
            "order_details.dlq has no message from 2:0 to 2:6 (partition 2 holds offsets 7 to 7)"
        );
        assert_eq!(
            chosen(&args(false, None, Some("0:4"), Some("0:1"))).unwrap_err(),
            "--from 0:4 comes after --to 0:1"
        );
        assert_eq!(
            chosen(&args(false, None, Some("0:0"), Some("2:7"))).unwrap_err(),
            "--from 0:0 and --to 2:7 must be in the same partition"
        );
    }

    #[test]
    fn a_payload_is_pretty_when_it_is_json_and_as_it_is_otherwise() {
        assert_eq!(
            pretty(br#"{"a":1}"#),
            ("{\n  \"a\": 1\n}".to_string(), true)
        );
        assert_eq!(pretty(b"not json"), ("not json".to_string(), false));
    }
}
