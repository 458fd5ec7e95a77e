//! Property tests of `PartitionLog` against an in-memory model: random
//! appends (with rolls from a tiny segment size), truncations, reopens,
//! reads and torn tails at random byte positions.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use super::batch::{self, BatchHeader};
use super::log::{LogConfig, PartitionLog};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Truncate(f64),
    Reopen,
    Read(f64, usize),
    TearTail(f64),
    Garbage(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..120);
    prop_oneof![
        6 => prop::collection::vec(value, 1..6).prop_map(Op::Append),
        1 => (0.0..1.0f64).prop_map(Op::Truncate),
        1 => Just(Op::Reopen),
        3 => (0.0..1.0f64, 1usize..2000).prop_map(|(o, m)| Op::Read(o, m)),
        1 => (0.0..1.0f64).prop_map(Op::TearTail),
        1 => prop::collection::vec(any::<u8>(), 1..80).prop_map(Op::Garbage),
    ]
}

/// The model: batches as stored (offsets assigned), in order.
#[derive(Default)]
struct Model {
    batches: Vec<(BatchHeader, Vec<u8>)>,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(0, |(h, _)| h.last_offset() + 1)
    }
    fn truncate(&mut self, offset: i64) {
        self.batches.retain(|(h, _)| h.last_offset() < offset);
    }
    fn index_of(&self, offset: i64) -> Option<usize> {
        self.batches
            .iter()
            .position(|(h, _)| h.last_offset() >= offset)
    }
}

const CONFIG: LogConfig = LogConfig {
    segment_bytes: 1024,
    index_interval: 200,
};

fn newest_segment(dir: &Path) -> (i64, std::path::PathBuf) {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let base = *bases.last().unwrap();
    (base, dir.join(super::segment::file_name(base, "log")))
}

fn pick(frac: f64, end: i64) -> i64 {
    ((end + 1) as f64 * frac).floor() as i64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let (mut log, _) = PartitionLog::open(&path, CONFIG).unwrap();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append(values) => {
                    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                    let mut buf = batch::build(0, &refs, 1_000);
                    let mut headers: Vec<_> = batch::split(&buf).unwrap().into_iter().map(|(_, h)| h).collect();
                    let a = log.append(&mut buf, &mut headers, 3).unwrap();
                    prop_assert_eq!(a.base_offset, model.end());
                    prop_assert_eq!(a.last_offset, model.end() + values.len() as i64 - 1);
                    let h = batch::validate(&buf).unwrap();
                    prop_assert_eq!(h.leader_epoch, 3);
                    model.batches.push((h, buf));
                }
                Op::Truncate(frac) => {
                    let target = pick(frac, model.end());
                    model.truncate(target);
                    let end = log.truncate_to(target).unwrap();
                    prop_assert_eq!(end, model.end());
                }
                Op::Reopen => {
                    drop(log);
                    let (l, rec) = PartitionLog::open(&path, CONFIG).unwrap();
                    log = l;
                    prop_assert_eq!(rec.truncated_bytes, 0);
                    prop_assert_eq!(rec.corruption, None);
                }
                Op::Read(frac, max) => {
                    let offset = pick(frac, model.end());
                    let got = log.read(offset, max, i64::MAX).unwrap();
                    match model.index_of(offset) {
                        None => prop_assert!(got.is_empty()),
                        Some(first) => {
                            // Whole batches from the one holding `offset`, within
                            // max bytes unless a single batch is larger.
                            let mut expected = Vec::new();
                            for (_, b) in &model.batches[first..] {
                                if !expected.is_empty() && expected.len() + b.len() > max {
                                    break;
                                }
                                expected.extend_from_slice(b);
                                if expected.len() >= max {
                                    break;
                                }
                            }
                            // Reads continue across segment boundaries, so the
                            // result is exactly the model's batches.
                            prop_assert_eq!(got, expected);
                        }
                    }
                    // Reads are bounded by `below`.
                    let below = pick(frac, model.end());
                    let capped = log.read(0, usize::MAX, below).unwrap();
                    for (_, h) in batch::split(&capped).unwrap() {
                        prop_assert!(h.last_offset() < below);
                    }
                }
                Op::TearTail(frac) => {
                    drop(log);
                    let (base, file) = newest_segment(&path);
                    let size = std::fs::metadata(&file).unwrap().len();
                    let cut = (size as f64 * frac) as u64;
                    OpenOptions::new().write(true).open(&file).unwrap().set_len(cut).unwrap();
                    // Batches of the newest segment from the first one that
                    // does not fit below `cut` are gone.
                    let mut valid_bytes = 0u64;
                    let mut keep_end = None;
                    for (h, b) in model.batches.iter().filter(|(h, _)| h.base_offset >= base) {
                        if valid_bytes + b.len() as u64 > cut {
                            keep_end = Some(h.base_offset);
                            break;
                        }
                        valid_bytes += b.len() as u64;
                    }
                    if let Some(end) = keep_end { model.truncate(end); }
                    let (l, rec) = PartitionLog::open(&path, CONFIG).unwrap();
                    log = l;
                    prop_assert_eq!(rec.truncated_bytes, cut - valid_bytes);
                    prop_assert_eq!(rec.corruption, None);
                    prop_assert_eq!(log.log_end(), model.end());
                }
                Op::Garbage(bytes) => {
                    drop(log);
                    let (_, file) = newest_segment(&path);
                    OpenOptions::new().append(true).open(&file).unwrap().write_all(&bytes).unwrap();
                    let (l, rec) = PartitionLog::open(&path, CONFIG).unwrap();
                    log = l;
                    prop_assert_eq!(rec.truncated_bytes, bytes.len() as u64);
                    prop_assert_eq!(log.log_end(), model.end());
                }
            }
            prop_assert_eq!(log.log_end(), model.end());
        }
        // Finally everything reads back exactly, batch for batch.
        let all = log.read(0, usize::MAX, i64::MAX).unwrap();
        let expected: Vec<u8> = model.batches.iter().flat_map(|(_, b)| b.clone()).collect();
        prop_assert_eq!(all, expected);
    }
}

#[test]
fn damage_in_the_middle_stops_the_log_below_it_until_a_follower_sets_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let (mut log, _) = PartitionLog::open(&path, LogConfig::default()).unwrap();
    let mut sizes = Vec::new();
    for i in 0..3u8 {
        let mut buf = batch::build(0, &[&[i; 50]], 1);
        let mut headers: Vec<_> = batch::split(&buf)
            .unwrap()
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        log.append(&mut buf, &mut headers, 0).unwrap();
        sizes.push(buf.len());
    }
    drop(log);
    let (_, file) = newest_segment(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[sizes[0] + 70] ^= 0xff; // inside the second batch's records
    std::fs::write(&file, &bytes).unwrap();
    let (mut log, rec) = PartitionLog::open(&path, LogConfig::default()).unwrap();
    let corruption = rec.corruption.expect("corruption reported");
    assert!(
        corruption.contains(&format!("at byte {}", sizes[0])),
        "{corruption}"
    );
    assert!(corruption.contains("CRC32C mismatch"), "{corruption}");
    assert_eq!(log.log_end(), 1, "serves only the batch below the damage");
    assert_eq!(log.read(0, usize::MAX, i64::MAX).unwrap().len(), sizes[0]);
    let mut buf = batch::build(0, &[b"x"], 1);
    let mut headers: Vec<_> = batch::split(&buf)
        .unwrap()
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let err = log.append(&mut buf, &mut headers, 0).unwrap_err();
    assert!(err.to_string().contains("offline"), "{err}");
    // The damaged bytes are still on disk for inspection: nothing was truncated.
    assert_eq!(
        std::fs::metadata(&file).unwrap().len() as usize,
        bytes.len()
    );
    // A follower sets the damage aside: the log is cut at the last valid
    // batch, takes writes again, and the damaged bytes are kept beside it.
    let what = log.set_aside_damage().unwrap().expect("it was offline");
    assert!(what.contains("CRC32C mismatch"), "{what}");
    assert_eq!(log.set_aside_damage().unwrap(), None, "once");
    assert_eq!(log.log_end(), 1);
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, sizes[0]);
    let mut aside = file.clone().into_os_string();
    aside.push(".damaged");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes[sizes[0]..].to_vec());
    let appended = log.append(&mut buf, &mut headers, 0).unwrap();
    assert_eq!(appended.base_offset, 1);
    drop(log);
    let (log, rec) = PartitionLog::open(&path, LogConfig::default()).unwrap();
    assert_eq!(rec.corruption, None, "clean after the damage went aside");
    assert_eq!(log.log_end(), 2);
}
