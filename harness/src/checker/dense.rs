//! Dense storage for the checker's per-message facts. Harness values are
//! (producer, sequence) pairs and offsets run from 0 per partition, so
//! vectors indexed by them replace hash maps: no hashing, and neighbours in
//! the history are neighbours in memory. Keys far outside the dense range
//! (garbage values, huge offsets) go to a fallback map, so nothing read
//! from a history can make the checker allocate without bound.

use rustc_hash::FxHashMap;

/// How far past the current end a key may be and still be stored densely.
const SLACK: u64 = 1 << 20;

/// A map from (outer, inner) to `T`, dense in both for small values.
#[derive(Debug)]
pub struct Dense<T> {
    rows: Vec<Vec<Option<T>>>,
    sparse: FxHashMap<(u64, u64), T>,
    len: usize,
}

impl<T> Default for Dense<T> {
    fn default() -> Self {
        Dense {
            rows: Vec::new(),
            sparse: FxHashMap::default(),
            len: 0,
        }
    }
}

impl<T: Default> Dense<T> {
    fn dense(&self, outer: u64, inner: u64) -> bool {
        outer < 4096 && inner <= self.rows.get(outer as usize).map_or(0, |r| r.len() as u64) + SLACK
    }

    /// The entry for a key, created empty if missing.
    pub fn entry(&mut self, outer: u64, inner: u64) -> &mut T {
        if !self.dense(outer, inner) {
            if !self.sparse.contains_key(&(outer, inner)) {
                self.len += 1;
            }
            return self.sparse.entry((outer, inner)).or_default();
        }
        if self.rows.len() <= outer as usize {
            self.rows.resize_with(outer as usize + 1, Vec::new);
        }
        let row = &mut self.rows[outer as usize];
        if row.len() <= inner as usize {
            row.resize_with(inner as usize + 1, || None);
        }
        let slot = &mut row[inner as usize];
        if slot.is_none() {
            self.len += 1;
            *slot = Some(T::default());
        }
        slot.as_mut().expect("just filled")
    }
}

impl<T> Dense<T> {
    /// The entry for a key, if present.
    pub fn get(&self, outer: u64, inner: u64) -> Option<&T> {
        match self
            .rows
            .get(outer as usize)
            .and_then(|r| r.get(inner as usize))
        {
            Some(Some(v)) => Some(v),
            _ => self.sparse.get(&(outer, inner)),
        }
    }

    /// The entry for a key, if present, to change.
    pub fn get_mut(&mut self, outer: u64, inner: u64) -> Option<&mut T> {
        let in_rows = matches!(
            self.rows
                .get(outer as usize)
                .and_then(|r| r.get(inner as usize)),
            Some(Some(_))
        );
        if in_rows {
            return self.rows[outer as usize][inner as usize].as_mut();
        }
        self.sparse.get_mut(&(outer, inner))
    }

    /// Every present entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = ((u64, u64), &T)> {
        let dense = self.rows.iter().enumerate().flat_map(|(o, row)| {
            row.iter()
                .enumerate()
                .filter_map(move |(i, v)| v.as_ref().map(|v| ((o as u64, i as u64), v)))
        });
        dense.chain(self.sparse.iter().map(|(k, v)| (*k, v)))
    }

    /// Number of present entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_keys_behave_like_a_map() {
        let mut d: Dense<u32> = Dense::default();
        *d.entry(2, 5) += 1;
        *d.entry(2, 5) += 1;
        *d.entry(0, 0) += 7;
        *d.entry(1, u64::MAX / 2) += 3; // far away: sparse, no huge allocation
        *d.entry(9999, 1) += 4; // outer too large: sparse
        assert_eq!(d.len(), 4);
        assert_eq!(d.get(2, 5), Some(&2));
        assert_eq!(d.get(2, 4), None);
        assert_eq!(d.get(1, u64::MAX / 2), Some(&3));
        *d.get_mut(9999, 1).unwrap() += 1;
        let mut all: Vec<_> = d.iter().map(|(k, v)| (k, *v)).collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ((0, 0), 7),
                ((1, u64::MAX / 2), 3),
                ((2, 5), 2),
                ((9999, 1), 5)
            ]
        );
    }
}
