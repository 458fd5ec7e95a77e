//! The lazy filesystem, mounted for real (FUSE, root): what survives a
//! power loss is exactly what was fsynced.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use unlost::lazyfs::{self, DiskError};

/// Runs `f` with a lazy filesystem mounted in a private mount namespace of
/// this thread (so a crash cannot leave a mount behind). Skips, saying so,
/// where FUSE cannot be mounted.
fn with_lazyfs(f: impl FnOnce(&Path, &lazyfs::LazyFsControl)) {
    if !unlost_tests::prerequisite(
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists(),
        "the lazy filesystem tests need root and /dev/fuse",
    ) {
        return;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("private mount namespace");
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = lazyfs::mount(&backing, &mnt).expect("mount");
    f(&mnt, &mount.control);
    drop(mount);
}

#[test]
fn with_a_writeback_age_old_unsynced_writes_survive_and_young_ones_vanish() {
    with_lazyfs(|mnt, control| {
        let writeback = std::time::Duration::from_millis(300);
        control.set_writeback(Some(writeback));
        // The feature-flags file of a broker: written at boot, never synced.
        std::fs::write(mnt.join("old.conf"), b"written at boot").unwrap();
        // Time is the input here: the write must age past the writeback.
        std::thread::sleep(writeback * 2);
        std::fs::write(mnt.join("young.log"), b"just written").unwrap();
        let lost = control.power_loss(None).unwrap();
        assert_eq!(
            (lost.files, lost.bytes_lost),
            (1, 12),
            "only the young write is lost"
        );
        assert_eq!(
            std::fs::read(mnt.join("old.conf")).unwrap(),
            b"written at boot"
        );
        assert_eq!(std::fs::read(mnt.join("young.log")).unwrap(), b"");
        // Without the writeback age (LazyFS's model) nothing unsynced
        // survives, however old: the rewrite is lost.
        control.set_writeback(None);
        std::fs::write(mnt.join("old.conf"), b"rewritten").unwrap();
        std::thread::sleep(writeback * 2);
        control.power_loss(None).unwrap();
        assert_eq!(
            std::fs::read(mnt.join("old.conf")).unwrap(),
            b"written at boot"
        );
    });
}

#[test]
fn the_dirty_limit_and_the_writeback_age_keep_unsynced_memory_bounded() {
    with_lazyfs(|mnt, control| {
        let chunk = vec![7u8; 256 << 10];
        let (limit, check) = (lazyfs::DIRTY_LIMIT, lazyfs::CHECK_EVERY);
        // LazyFS's model (no writeback age), a log never fsynced: past the
        // dirty limit the oldest writes go to the backing file, as a
        // kernel writes dirty pages back, and survive a power loss.
        let total = limit + 16 * check;
        let mut f = std::fs::File::create(mnt.join("never-synced.log")).unwrap();
        let mut written = 0;
        while written < total {
            f.write_all(&chunk).unwrap();
            written += chunk.len() as u64;
        }
        let held = control.unsynced_bytes();
        assert!(
            held <= limit + check,
            "{held} unsynced bytes held in memory, more than the limit {limit} plus one check"
        );
        let backed = std::fs::metadata(control.backing().join("never-synced.log"))
            .unwrap()
            .len();
        assert!(
            backed >= total - limit - check,
            "only {backed} of {total} bytes written back"
        );
        let lost = control.power_loss(None).unwrap();
        assert_eq!(lost.bytes_lost, total - backed, "the rest is lost");
        assert_eq!(
            std::fs::metadata(mnt.join("never-synced.log"))
                .unwrap()
                .len(),
            backed
        );
        // A writeback age of zero: every write is old by the next check,
        // so at most one check's worth stays in memory.
        control.set_writeback(Some(std::time::Duration::ZERO));
        let mut g = std::fs::File::create(mnt.join("aged.log")).unwrap();
        for _ in 0..(2 * check / chunk.len() as u64) {
            g.write_all(&chunk).unwrap();
        }
        let backed = std::fs::metadata(control.backing().join("aged.log"))
            .unwrap()
            .len();
        assert!(backed >= check, "only {backed} bytes written back");
        assert!(control.unsynced_bytes() < check + chunk.len() as u64);
    });
}

#[test]
fn unsynced_writes_vanish_and_synced_ones_survive_power_loss() {
    with_lazyfs(|mnt, control| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(mnt.join("seg.log"))
            .unwrap();
        f.write_all(b"durable").unwrap();
        f.sync_data().unwrap();
        f.write_all(b"+volatile").unwrap();
        assert_eq!(
            std::fs::read(mnt.join("seg.log")).unwrap(),
            b"durable+volatile",
            "reads see unsynced data"
        );
        assert_eq!(control.unsynced_bytes(), 9);
        assert_eq!(
            std::fs::read(control.backing().join("seg.log")).unwrap(),
            b"durable",
            "backing holds only synced data"
        );
        let lost = control.power_loss(None).unwrap();
        assert_eq!((lost.files, lost.bytes_lost), (1, 9));
        assert_eq!(std::fs::read(mnt.join("seg.log")).unwrap(), b"durable");
        assert_eq!(std::fs::metadata(mnt.join("seg.log")).unwrap().len(), 7);
        // Metadata passes through: a file created and never synced exists, empty.
        std::fs::write(mnt.join("new.txt"), b"never synced").unwrap();
        control.power_loss(None).unwrap();
        assert_eq!(std::fs::read(mnt.join("new.txt")).unwrap(), b"");
        // rename and directories pass through too.
        std::fs::create_dir(mnt.join("d")).unwrap();
        std::fs::rename(mnt.join("seg.log"), mnt.join("d/moved.log")).unwrap();
        assert_eq!(std::fs::read(mnt.join("d/moved.log")).unwrap(), b"durable");
        let names: Vec<String> = std::fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(
            names.contains(&"d".to_string()) && names.contains(&"new.txt".to_string()),
            "{names:?}"
        );
        // O_SYNC / O_DSYNC handles write through: nats-server writes its
        // metadata this way, without fsync.
        use std::os::unix::fs::OpenOptionsExt;
        for (name, flag) in [("osync", nix::libc::O_SYNC), ("odsync", nix::libc::O_DSYNC)] {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .custom_flags(flag)
                .open(mnt.join(name))
                .unwrap();
            f.write_all(b"written through").unwrap();
            drop(f);
            control.power_loss(None).unwrap();
            assert_eq!(
                std::fs::read(mnt.join(name)).unwrap(),
                b"written through",
                "{name}"
            );
        }
    });
}

#[test]
fn torn_write_keeps_a_prefix_and_disk_errors_fail_io() {
    with_lazyfs(|mnt, control| {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(mnt.join("f"))
            .unwrap();
        f.write_all_at(b"0123456789", 0).unwrap();
        control.power_loss(Some(&mut |len| len / 2)).unwrap();
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"01234");
        control.set_disk_error(Some(DiskError {
            writes: true,
            fsyncs: true,
        }));
        let err = f.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EIO));
        control.set_disk_error(Some(DiskError {
            writes: false,
            fsyncs: true,
        }));
        f.write_all_at(b"abc", 0).unwrap();
        assert_eq!(
            f.sync_data().unwrap_err().raw_os_error(),
            Some(nix::libc::EIO)
        );
        control.set_disk_error(None);
        f.sync_data().unwrap();
        control.power_loss(None).unwrap();
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"abc34");
    });
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Sync {
        file: usize,
    },
    PowerLoss,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0usize..3, 0u64..300, 1usize..120, any::<u8>()).prop_map(|(file, offset, len, byte)| Step::Write { file, offset, len, byte }),
        1 => (0usize..3, 0u64..300).prop_map(|(file, size)| Step::Truncate { file, size }),
        2 => (0usize..3).prop_map(|file| Step::Sync { file }),
        1 => Just(Step::PowerLoss),
    ]
}

fn write_model(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset as usize..end].copy_from_slice(data);
}

#[test]
fn random_write_sync_truncate_power_loss_sequences_match_the_model() {
    with_lazyfs(|mnt, control| {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let round = std::cell::Cell::new(0);
        runner
            .run(&prop::collection::vec(step(), 1..40), |steps| {
                round.set(round.get() + 1);
                let names: Vec<_> = (0..3)
                    .map(|i| mnt.join(format!("r{}-{i}", round.get())))
                    .collect();
                let files: Vec<_> = names
                    .iter()
                    .map(|n| {
                        OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .read(true)
                            .write(true)
                            .open(n)
                            .unwrap()
                    })
                    .collect();
                // Model: what is durable, and what is visible.
                let mut durable: BTreeMap<usize, Vec<u8>> =
                    (0..3).map(|i| (i, Vec::new())).collect();
                let mut visible = durable.clone();
                for s in &steps {
                    match *s {
                        Step::Write {
                            file,
                            offset,
                            len,
                            byte,
                        } => {
                            files[file].write_all_at(&vec![byte; len], offset).unwrap();
                            write_model(visible.get_mut(&file).unwrap(), offset, &vec![byte; len]);
                        }
                        Step::Truncate { file, size } => {
                            files[file].set_len(size).unwrap();
                            visible.get_mut(&file).unwrap().resize(size as usize, 0);
                        }
                        Step::Sync { file } => {
                            files[file].sync_data().unwrap();
                            durable.insert(file, visible[&file].clone());
                        }
                        Step::PowerLoss => {
                            control.power_loss(None).unwrap();
                            visible = durable.clone();
                        }
                    }
                    for i in 0..3 {
                        let got = std::fs::read(&names[i]).unwrap();
                        prop_assert_eq!(
                            &got,
                            &visible[&i],
                            "visible contents of file {} after {:?}",
                            i,
                            s
                        );
                    }
                }
                control.power_loss(None).unwrap();
                for i in 0..3 {
                    prop_assert_eq!(
                        &std::fs::read(&names[i]).unwrap(),
                        &durable[&i],
                        "durable contents of file {}",
                        i
                    );
                }
                Ok(())
            })
            .unwrap();
    });
}
