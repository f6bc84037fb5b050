//! Keyed state of an exactly-once service, per partition of its source, kept the way Kafka
//! Streams keeps a state store (and, with [`Store::restore_all`] and [`Store::remember`], the
//! keys of a whole topic, for the at-least-once loop's handled inputs).
//!
//! - **The truth** is a compacted changelog topic with the source's partitions: each entry is
//!   a record in the partition of the input it was made from, written in the same Kafka
//!   transaction as the outputs it guards. So state and outputs are committed, or aborted,
//!   together, and whoever is assigned a partition next finds its state there.
//! - **A copy** lives in an embedded database ([redb]) in `FLATPACK_STORE_DIR`, so that memory
//!   stays small however many keys there are, and a restart reads only what the changelog got
//!   since the copy's checkpoint. Entries go into the copy once their transaction committed,
//!   with, per partition, the offset after the last changelog record this instance wrote: the
//!   checkpoint, below which the copy holds every committed entry. Assigned a partition, an
//!   instance reads the changelog from that checkpoint to its end (what others wrote while
//!   they held the partition) before applying anything. Without `FLATPACK_STORE_DIR` the copy
//!   is in memory and each start reads the changelogs from their beginning.
//!
//! The copy is written to disk without waiting for it (redb's `Durability::None`), and made
//! durable every few seconds. A machine that crashes loses the newest entries together with
//! the checkpoint that covered them (redb commits both at once), so they are read from the
//! changelog again: the copy is never ahead of its checkpoint.
//!
//! [redb]: https://www.redb.org

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::counter;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use redb::backends::InMemoryBackend;
use redb::{
    Database, Durability, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, Value, WriteTransaction,
};
use tracing::{debug, info, warn};

use super::exactly_once::Output;
use super::read::{self, Start};
use super::{Written, reader_to_end};
use crate::settings::KafkaSettings;

/// Entries: (partition, key) → value.
const ENTRIES: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("entries");
/// Checkpoints: partition → the changelog offset below which [`ENTRIES`] holds every
/// committed record.
const CHECKPOINTS: TableDefinition<u32, i64> = TableDefinition::new("checkpoints");

/// What redb may cache of the copy in memory.
const CACHE_BYTES: usize = 8 << 20;
/// How often the copy is made durable on disk.
const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How long reading the changelog of newly assigned partitions may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// Entries restored per redb transaction.
const RESTORE_CHUNK: usize = 10_000;

/// One service instance's store: entries by partition and key.
pub struct Store {
    kafka: KafkaSettings,
    /// The changelog topic (with the source's partitions).
    changelog: String,
    /// Where the copy lives (`None`: in memory).
    path: Option<PathBuf>,
    db: Option<Database>,
    /// Entries of the open transaction, by partition and key.
    pending: HashMap<i32, HashMap<String, Vec<u8>>>,
    /// Entries committed to Kafka that the copy does not hold yet (its last write failed).
    unsaved: HashMap<i32, HashMap<String, Vec<u8>>>,
    /// Checkpoints to write with `unsaved`.
    unsaved_checkpoints: HashMap<i32, i64>,
    syncs: Syncs,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("changelog", &self.changelog)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store of `changelog`, kept by `owner` (unique among the instances that may run on
    /// one machine at once: its file is `<FLATPACK_STORE_DIR>/<owner>.redb`). The copy is
    /// opened at the first [`Store::restore`].
    pub fn new(kafka: &KafkaSettings, changelog: String, owner: &str) -> Self {
        Self {
            path: kafka
                .store_dir
                .as_ref()
                .map(|dir| dir.join(format!("{owner}.redb"))),
            kafka: kafka.clone(),
            changelog,
            db: None,
            pending: HashMap::new(),
            unsaved: HashMap::new(),
            unsaved_checkpoints: HashMap::new(),
            syncs: Syncs::default(),
        }
    }

    /// The entry under `key` in `partition`, as of the open transaction.
    pub fn get(&self, partition: i32, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        for layer in [&self.pending, &self.unsaved] {
            if let Some(value) = layer.get(&partition).and_then(|p| p.get(key)) {
                return Ok(Some(value.clone()));
            }
        }
        let read = self.db()?.begin_read()?;
        let Some(table) = readable(&read, ENTRIES)? else {
            return Ok(None);
        };
        Ok(table
            .get((partition as u32, key))?
            .map(|value| value.value().to_vec()))
    }

    /// Sets `key` in `partition` in the open transaction; returns the changelog record to
    /// write in it.
    pub fn put(&mut self, partition: i32, key: String, value: Vec<u8>) -> Output {
        let mut record = self.put_any(partition, key, value);
        record.partition = Some(partition);
        record
    }

    /// For a store of a whole topic ([`Store::restore_all`]): sets `key` under `bucket` in the
    /// open transaction; returns the record to write in it, in the partition its key gives.
    pub fn put_any(&mut self, bucket: i32, key: String, value: Vec<u8>) -> Output {
        let record = Output::new(&self.changelog, key.clone(), value.clone());
        self.pending.entry(bucket).or_default().insert(key, value);
        record
    }

    /// Every entry under `bucket` in the copy, by key (what the last restore and the
    /// committed transactions since put there).
    pub fn entries(&self, bucket: i32) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let read = self.db()?.begin_read()?;
        let mut entries = Vec::new();
        if let Some(table) = readable(&read, ENTRIES)? {
            let bucket = bucket as u32;
            for entry in table.range((bucket, "")..(bucket + 1, ""))? {
                let (key, value) = entry?;
                entries.push((key.value().1.to_owned(), value.value().to_vec()));
            }
        }
        for layer in [&self.unsaved, &self.pending] {
            for (key, value) in layer.get(&bucket).into_iter().flatten() {
                match entries.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
                    Ok(at) => entries[at].1.clone_from(value),
                    Err(at) => entries.insert(at, (key.clone(), value.clone())),
                }
            }
        }
        Ok(entries)
    }

    /// The open transaction committed, having written `written`: its entries go into the
    /// copy, with the checkpoints past them.
    pub fn committed(&mut self, written: &Written) {
        for (partition, entries) in self.pending.drain() {
            self.unsaved.entry(partition).or_default().extend(entries);
        }
        for (partition, next) in written.next_offsets(&self.changelog) {
            let checkpoint = self.unsaved_checkpoints.entry(partition).or_default();
            *checkpoint = (*checkpoint).max(next);
        }
        if self.unsaved.is_empty() && self.unsaved_checkpoints.is_empty() {
            return;
        }
        match self.save() {
            Ok(()) => {
                self.unsaved.clear();
                self.unsaved_checkpoints.clear();
            }
            // Kept in memory, and tried again after the next commit.
            Err(err) => {
                warn!(changelog = %self.changelog, cause = format!("{err:#}"), "the state's on-disk copy could not be written; keeping the entries in memory")
            }
        }
    }

    /// The open transaction was aborted: its entries are forgotten.
    pub fn aborted(&mut self) {
        self.pending.clear();
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let durability = self.syncs.next();
        let entries = self.unsaved.iter().flat_map(|(partition, values)| {
            values
                .iter()
                .map(|(key, value)| (*partition, key.as_str(), value.as_slice()))
        });
        write(self.db()?, entries, &self.unsaved_checkpoints, durability)?;
        self.syncs.written(durability);
        Ok(())
    }

    fn db(&self) -> anyhow::Result<&Database> {
        self.db
            .as_ref()
            .context("the state store is used before it was restored")
    }

    /// Opens the copy ([`Store::restore`] does it first).
    pub fn open(&mut self) -> anyhow::Result<()> {
        if self.db.is_none() {
            self.db = Some(open_copy(self.path.as_deref())?);
        }
        Ok(())
    }

    /// Brings the copy of `partitions` up to date: reads their changelog from the copy's
    /// checkpoints to the end (committed records only). Call it for newly assigned partitions
    /// before applying any of their input.
    pub fn restore(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.read_changelog(Some(partitions), None, Read::Restore)
    }

    /// For a store of the keys of a whole topic (every entry under partition 0, as
    /// [`Store::remember`] puts them): reads every partition of the topic from the copy's
    /// checkpoints to its end.
    pub fn restore_all(&mut self) -> anyhow::Result<()> {
        self.read_changelog(None, Some(0), Read::Restore)
    }

    /// [`Store::restore_all`] while the store is in use: the same read, which moves the
    /// checkpoints past the entries [`Store::remember`] noted (so that the next start need
    /// not read them again), logged at debug and not counted as restored.
    pub fn read_on_all(&mut self) -> anyhow::Result<()> {
        self.read_changelog(None, Some(0), Read::On)
    }

    /// Notes `key` under `partition` in the copy at once, outside any transaction (an entry
    /// whose record another write put on the topic).
    pub fn remember(&mut self, partition: i32, key: String) {
        self.unsaved
            .entry(partition)
            .or_default()
            .insert(key, Vec::new());
        self.committed(&Written::default());
    }

    /// Reads `partitions` (all of the topic's: `None`) from their checkpoints to their end
    /// into the copy: each entry under its record's partition, or all under `bucket`.
    fn read_changelog(
        &mut self,
        partitions: Option<&[i32]>,
        bucket: Option<i32>,
        why: Read,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        self.open()?;
        // Entries not yet in the copy are written first: the checkpoints read below count on it.
        if !self.unsaved.is_empty() || !self.unsaved_checkpoints.is_empty() {
            self.save()?;
            self.unsaved.clear();
            self.unsaved_checkpoints.clear();
        }
        let consumer = reader_to_end(
            &self.kafka,
            "state-restore",
            &self.kafka.topics().scoped("state-restore"),
            Duration::from_millis(10),
        )?;
        let partitions = match partitions {
            Some(partitions) => partitions.to_vec(),
            None => read::partitions_of(&consumer, &self.changelog, Duration::from_secs(10))?,
        };
        let partitions = partitions.as_slice();
        let mut from = self.checkpoints(partitions)?;
        let mut ahead = Vec::new();
        for (&partition, &checkpoint) in &from {
            let (_, end) = consumer
                .fetch_watermarks(&self.changelog, partition, Duration::from_secs(10))
                .with_context(|| format!("reading the end of {}[{partition}]", self.changelog))?;
            if checkpoint > end {
                // Not this changelog's copy (the topic was deleted and made again).
                warn!(changelog = %self.changelog, partition, checkpoint, end, "the state's on-disk copy is ahead of its changelog; reading it again from its beginning");
                ahead.push(partition);
            }
        }
        // Entries under one bucket may come from any partition: all are read again.
        if bucket.is_some() && !ahead.is_empty() {
            ahead = partitions.to_vec();
        }
        for partition in ahead {
            self.clear(bucket.unwrap_or(partition), partition)?;
            from.insert(partition, 0);
        }
        read::assign_at(
            &consumer,
            &self.changelog,
            partitions,
            Start::After(&from),
            RESTORE_TIMEOUT,
        )?;
        let db = self.db()?;
        let mut chunk: Vec<(i32, String, Vec<u8>)> = Vec::new();
        let mut restored = 0u64;
        let mut failed: Option<anyhow::Error> = None;
        let mut flush = |chunk: &mut Vec<(i32, String, Vec<u8>)>, reached: &HashMap<i32, i64>| {
            restored += chunk.len() as u64;
            let entries = chunk
                .iter()
                .map(|(partition, key, value)| (*partition, key.as_str(), value.as_slice()));
            let result = write(db, entries, reached, Durability::None);
            chunk.clear();
            result
        };
        read::read_to_end(
            &consumer,
            &self.changelog,
            partitions,
            RESTORE_TIMEOUT,
            |message| {
                let Some(key) = message.key() else {
                    warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping a changelog record without a key"
                    );
                    return;
                };
                chunk.push((
                    bucket.unwrap_or(message.partition()),
                    String::from_utf8_lossy(key).into_owned(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
                if chunk.len() >= RESTORE_CHUNK && failed.is_none() {
                    failed = flush(&mut chunk, &HashMap::new()).err();
                }
            },
        )?;
        if let Some(err) = failed {
            return Err(err);
        }
        // Where reading stopped: past the last committed record (and any aborted ones).
        let positions = consumer.position()?;
        let reached: HashMap<i32, i64> = positions
            .elements_for_topic(&self.changelog)
            .iter()
            .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
            .filter(|(_, offset)| *offset >= 0)
            .collect();
        flush(&mut chunk, &reached)?;
        match why {
            Read::Restore => {
                counter!("flatpack_state_restored_total", "changelog" => self.changelog.clone())
                    .increment(restored);
                info!(changelog = %self.changelog, ?partitions, ?from, restored, elapsed = ?started.elapsed(), "state restored");
            }
            Read::On => {
                debug!(changelog = %self.changelog, ?partitions, ?from, read = restored, elapsed = ?started.elapsed(), "state read on")
            }
        }
        Ok(())
    }

    /// The checkpoint of each of `partitions` (0 where there is none).
    fn checkpoints(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
        let known = checkpoints(self.db()?)?;
        Ok(partitions
            .iter()
            .map(|&partition| (partition, known.get(&partition).copied().unwrap_or(0)))
            .collect())
    }

    /// Drops every entry under `bucket` and the checkpoint of `partition`.
    fn clear(&mut self, bucket: i32, partition: i32) -> anyhow::Result<()> {
        let db = self.db()?;
        let txn = db.begin_write()?;
        {
            let bucket = bucket as u32;
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in((bucket, "")..(bucket + 1, ""), |_, _| false)?;
            txn.open_table(CHECKPOINTS)?.remove(partition as u32)?;
        }
        txn.commit()?;
        Ok(())
    }
}

/// Why a changelog is read into the copy.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// Before the state is used: at start, or for newly assigned partitions.
    Restore,
    /// While it is in use, to move the checkpoints on.
    On,
}

impl Drop for Store {
    /// Makes the copy durable (an empty commit with redb's default, immediate durability),
    /// so that the next start reads nothing it already has.
    fn drop(&mut self) {
        let Some(db) = &self.db else { return };
        if let Err(err) = make_durable(db) {
            warn!(changelog = %self.changelog, cause = format!("{err:#}"), "the state's on-disk copy could not be made durable");
        }
    }
}

/// The partition of `key` among `partitions`, for a store whose entries are not tied to the
/// partition of their input (an instance that holds every partition): the same on every
/// machine and in every release.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let hash = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (hash % partitions.max(1) as u32) as i32
}

/// Opens (or creates) the on-disk copy of a state at `path`, a copy in memory without one.
/// A copy that another process on this machine holds (a standby that took over from one
/// still running) is left to it: this one gets a copy in memory, and a warning says so.
pub fn open_copy(path: Option<&Path>) -> anyhow::Result<Database> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let Some(path) = path else {
        return Ok(builder.create_with_backend(InMemoryBackend::new())?);
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    match builder.create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            warn!(path = %path.display(), "the state's on-disk copy is held by another process; keeping this instance's copy in memory");
            Ok(builder.create_with_backend(InMemoryBackend::new())?)
        }
        Err(err) => {
            Err(err).with_context(|| format!("opening the state's on-disk copy {}", path.display()))
        }
    }
}

/// `definition`'s table as `read` sees it; `None` while nothing was ever written to it.
pub fn readable<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    definition: TableDefinition<K, V>,
) -> anyhow::Result<Option<ReadOnlyTable<K, V>>> {
    match read.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Makes every commit to `db` so far durable: an empty commit with redb's default, immediate
/// durability (at a clean stop, so that the next start reads nothing it already has).
pub fn make_durable(db: &Database) -> anyhow::Result<()> {
    db.begin_write()?.commit()?;
    Ok(())
}

/// How a copy's writes are made: without waiting for the disk (redb's `Durability::None`),
/// but durably every five seconds.
#[derive(Debug)]
pub struct Syncs {
    last: Instant,
}

impl Default for Syncs {
    fn default() -> Self {
        Self {
            last: Instant::now(),
        }
    }
}

impl Syncs {
    /// The durability of the next write.
    pub fn next(&self) -> Durability {
        if self.last.elapsed() >= SYNC_INTERVAL {
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    /// A write with `durability` succeeded.
    pub fn written(&mut self, durability: Durability) {
        if matches!(durability, Durability::Immediate) {
            self.last = Instant::now();
        }
    }
}

/// Writes `entries` into the copy, with `checkpoints` where they are past the ones it has.
fn write<'a>(
    db: &Database,
    entries: impl Iterator<Item = (i32, &'a str, &'a [u8])>,
    checkpoints: &HashMap<i32, i64>,
    durability: Durability,
) -> anyhow::Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    {
        let mut table = txn.open_table(ENTRIES)?;
        for (partition, key, value) in entries {
            table.insert((partition as u32, key), value)?;
        }
    }
    advance(&txn, checkpoints)?;
    txn.commit()?;
    Ok(())
}

/// Moves the checkpoints in `txn` forward to `next` (partition → the offset after the last
/// record the copy holds) where they are behind it; never back.
pub fn advance(txn: &WriteTransaction, next: &HashMap<i32, i64>) -> anyhow::Result<()> {
    let mut known = txn.open_table(CHECKPOINTS)?;
    for (&partition, &next) in next {
        let current = known.get(partition as u32)?.map(|v| v.value());
        if current.is_none_or(|current| current < next) {
            known.insert(partition as u32, next)?;
        }
    }
    Ok(())
}

/// Every checkpoint the copy holds: partition → the offset to read on from.
pub fn checkpoints(db: &Database) -> anyhow::Result<HashMap<i32, i64>> {
    let read = db.begin_read()?;
    let Some(table) = readable(&read, CHECKPOINTS)? else {
        return Ok(HashMap::new());
    };
    table
        .iter()?
        .map(|entry| {
            let (partition, next) = entry?;
            Ok((partition.value() as i32, next.value()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(store_dir: Option<PathBuf>) -> KafkaSettings {
        KafkaSettings {
            store_dir,
            ..KafkaSettings::default()
        }
    }

    fn opened(kafka: &KafkaSettings) -> Store {
        let mut store = Store::new(kafka, "changelog".into(), "owner");
        store.open().unwrap();
        store
    }

    fn written(partition: i32, last_offset: i64) -> Written {
        let mut written = Written::default();
        written.note("changelog", partition, last_offset);
        written.note("another-topic", partition, last_offset + 100);
        written
    }

    #[test]
    fn an_entry_is_seen_in_its_transaction_kept_when_it_commits_and_gone_when_it_aborts() {
        let mut store = opened(&settings(None));
        let record = store.put(2, "1001".into(), b"a".to_vec());
        assert_eq!(
            (record.topic.as_str(), record.partition, record.key.as_str()),
            ("changelog", Some(2), "1001")
        );
        assert_eq!(store.get(2, "1001").unwrap(), Some(b"a".to_vec()));
        assert_eq!(store.get(1, "1001").unwrap(), None, "per partition");
        store.committed(&written(2, 40));
        store.put(2, "1002".into(), b"b".to_vec());
        store.aborted();
        assert_eq!(store.get(2, "1001").unwrap(), Some(b"a".to_vec()));
        assert_eq!(store.get(2, "1002").unwrap(), None);
        assert_eq!(store.checkpoints(&[2]).unwrap(), HashMap::from([(2, 41)]));
    }

    #[test]
    fn the_on_disk_copy_and_its_checkpoints_outlive_the_process_and_only_move_forward() {
        let dir = std::env::temp_dir().join(format!("flatpack-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kafka = settings(Some(dir.clone()));
        {
            let mut store = opened(&kafka);
            store.put(0, "7".into(), b"confirmed".to_vec());
            store.committed(&written(0, 9));
            store.put(1, "8".into(), b"declined".to_vec());
            store.committed(&written(1, 3));
            // A later transaction that wrote nothing to partition 0 leaves its checkpoint.
            store.put(1, "9".into(), b"declined".to_vec());
            store.committed(&written(1, 5));
        }
        assert!(dir.join("owner.redb").is_file());
        let store = opened(&kafka);
        assert_eq!(store.get(0, "7").unwrap(), Some(b"confirmed".to_vec()));
        assert_eq!(store.get(1, "9").unwrap(), Some(b"declined".to_vec()));
        assert_eq!(store.get(0, "8").unwrap(), None);
        assert_eq!(
            store.checkpoints(&[0, 1, 2]).unwrap(),
            HashMap::from([(0, 10), (1, 6), (2, 0)])
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_on_the_same_copy_keeps_its_own_in_memory() {
        let dir = std::env::temp_dir().join(format!("flatpack-state-held-{}", std::process::id()));
        let kafka = settings(Some(dir.clone()));
        let mut first = opened(&kafka);
        first.put(0, "1".into(), b"x".to_vec());
        first.committed(&written(0, 0));
        let second = opened(&kafka);
        assert_eq!(second.get(0, "1").unwrap(), None, "not the held copy");
        drop((first, second));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_remembered_key_is_in_the_copy_at_once_and_moves_no_checkpoint() {
        let mut store = opened(&settings(None));
        store.remember(0, "1001".into());
        assert_eq!(store.get(0, "1001").unwrap(), Some(Vec::new()));
        assert!(store.unsaved.is_empty(), "written to the copy");
        assert_eq!(
            store.checkpoints(&[0, 1]).unwrap(),
            HashMap::from([(0, 0), (1, 0)])
        );
    }

    #[test]
    fn the_entries_of_a_bucket_are_those_of_the_copy_and_the_open_transaction_by_key() {
        let mut store = opened(&settings(None));
        let record = store.put_any(0, "2026-11-02".into(), b"b".to_vec());
        assert_eq!(record.partition, None, "the key decides its partition");
        store.put_any(0, "2026-11-01".into(), b"a".to_vec());
        store.put(1, "2026-11-01".into(), b"other bucket".to_vec());
        store.committed(&written(0, 4));
        store.put_any(0, "2026-11-02".into(), b"b2".to_vec());
        store.put_any(0, "2026-11-03".into(), b"c".to_vec());
        let entries = store.entries(0).unwrap();
        let expected: Vec<(String, Vec<u8>)> = [
            ("2026-11-01", "a"),
            ("2026-11-02", "b2"),
            ("2026-11-03", "c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(entries, expected);
        store.aborted();
        assert_eq!(store.entries(0).unwrap()[1].1, b"b".to_vec());
        assert_eq!(store.entries(0).unwrap().len(), 2);
    }

    #[test]
    fn a_key_always_falls_in_the_same_partition() {
        // Fixed for good (the first four bytes of the key's SHA-256, big-endian, modulo the
        // partitions): a store written by one release is read by the next.
        assert_eq!(partition_of("1001", 6), 5);
        assert_eq!(partition_of("1001", 12), 11);
        assert_eq!(partition_of("order-42", 6), 1);
        let spread: std::collections::HashSet<i32> = (0..600)
            .map(|id| partition_of(&id.to_string(), 6))
            .collect();
        assert_eq!(spread, (0..6).collect());
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }
}
