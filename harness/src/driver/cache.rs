//! Fetched broker releases: one directory per broker and version under
//! $UNLOST_CACHE (else $XDG_CACHE_HOME/unlost, else ~/.cache/unlost),
//! fetched once. Runs at the same time fetch a release once (a lock file);
//! a fetch that fails or stops half-way leaves nothing that looks fetched
//! (a release is there only once its `fetched` marker is).

use std::path::{Path, PathBuf};

use super::DriverError;

/// The cache's root.
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os("UNLOST_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("unlost");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("unlost")
}

/// The directory of `broker` at `version` (`<root>/<broker>/<version>/release`),
/// made by `fetch` into an empty directory when it is not there yet.
/// `fetch` gets the directory to fill; on error the partial fetch is
/// removed.
pub fn release(
    broker: &str,
    version: &str,
    fetch: impl FnOnce(&Path) -> Result<(), DriverError>,
) -> Result<PathBuf, DriverError> {
    let dir = root().join(broker).join(version);
    let release = dir.join("release");
    let done = dir.join("fetched");
    if done.is_file() {
        return Ok(release);
    }
    let io = |what: &str, path: &Path, e: std::io::Error| {
        DriverError::Recipe(format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    let lock_path = dir.join("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| io("create", &lock_path, e))?;
    lock.lock().map_err(|e| io("lock", &lock_path, e))?;
    if done.is_file() {
        return Ok(release);
    }
    eprintln!(
        "unlost: fetching {broker} {version} into {} (once)",
        dir.display()
    );
    let partial = dir.join("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| io("create", &partial, e))?;
    if let Err(e) = fetch(&partial) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&release);
    std::fs::rename(&partial, &release).map_err(|e| io("rename", &partial, e))?;
    std::fs::write(&done, format!("{broker} {version}\n")).map_err(|e| io("create", &done, e))?;
    Ok(release)
}

/// `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_fetched_once_and_a_failed_fetch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("UNLOST_CACHE", dir.path());
        let mut calls = 0;
        for _ in 0..2 {
            let r = release("b", "1.0.0", |d| {
                calls += 1;
                std::fs::write(d.join("bin"), "x").map_err(|e| DriverError::Recipe(e.to_string()))
            })
            .unwrap();
            assert!(r.join("bin").is_file());
        }
        assert_eq!(calls, 1);
        let e = release("b", "9.9.9", |_| {
            Err(DriverError::Recipe("no such release".into()))
        });
        assert!(e.is_err());
        assert!(!dir.path().join("b/9.9.9").exists());
        std::env::remove_var("UNLOST_CACHE");
    }
}
